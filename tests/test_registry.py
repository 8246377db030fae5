"""The registry (configs/registry.py): registration, spec strings, parametric names and third-party entry points."""
from __future__ import annotations

import sys
import textwrap

import pytest

from bitbench.configs.registry import Registry
from bitbench.configs.spec import SpecError, format_spec, parse_spec, parse_value
from bitbench.configs.registries import DEFENSES, create_defense, list_defenses


# --------------------------------------------------------------------------------------------- spec strings

def test_parse_spec():
    assert parse_spec("name") == ("name", {})
    assert parse_spec(" name : a=1, b = x ,") == ("name", {"a": "1", "b": "x"})
    assert parse_spec("random_p0.01:patterns=10") == ("random_p0.01", {"patterns": "10"})
    for bad in ("", "   ", None, 3):
        with pytest.raises(SpecError, match="non-empty string"):
            parse_spec(bad)
    with pytest.raises(SpecError, match="not key=value"):
        parse_spec("name:a")
    with pytest.raises(SpecError, match="not key=value"):
        parse_spec("name:=3")


@pytest.mark.parametrize("text,default,expect", [
    ("3", 1, 3), ("3.0", 1, 3), ("1e2", 1, 100), ("0.5", 1.0, 0.5), ("2", 1.0, 2.0), ("1e-3", 0.1, 0.001),
    ("true", False, True), ("Off", True, False), ("yes", False, True), ("none", 1.0, None), ("NULL", "a", None),
    ("abc", "x", "abc"), (" s ", "x", "s"), ("7", None, 7), ("7.5", None, 7.5), ("word", None, "word"),
])
def test_parse_value(text, default, expect):
    v = parse_value(text, default)
    assert v == expect and type(v) is type(expect)


@pytest.mark.parametrize("text,default,match", [("3.5", 1, "integer"), ("x", 1, "integer"),
                                                 ("x", 1.0, "number"), ("maybe", True, "boolean")])
def test_parse_value_errors(text, default, match):
    with pytest.raises(SpecError, match=match):
        parse_value(text, default)


def test_format_spec():
    assert format_spec("a", {}) == "a"
    assert format_spec("a", {"z": 1, "b": 0.5, "c": None, "d": True}) == "a:b=0.5,c=none,d=true,z=1"
    assert format_spec("a", {"x": 1, "y": 2.0}, defaults={"x": 1, "y": 1.0}) == "a:y=2.0"
    assert format_spec("a", {"x": 1}, defaults={"x": 1}) == "a"


# ---------------------------------------------------------------------------------------------- registration

@pytest.fixture
def reg():
    r = Registry("widget")

    @r.register("alpha")
    class Alpha:
        """An alpha widget.

        Args:
            size (int): how big.
            rate: how fast.
        """

        def __init__(self, size: int = 3, rate: float = 0.5, name: str = "a", flag: bool = False):
            self.size, self.rate, self.name, self.flag = size, rate, name, flag

    @r.register
    def beta(k: int = 1):
        """Beta factory."""
        return ("beta", k)

    @r.register("random", pattern=r"random_p(?P<p>[0-9.eE+-]+)", pattern_help="random_p<rate>")
    def random(p: float = 0.01, patterns: int = 50):
        return ("random", p, patterns)

    return r


def test_register_and_create(reg):
    assert reg.names() == ["alpha", "beta", "random"] and reg.list("a*") == ["alpha"]
    a = reg.create("alpha:size=5,flag=on")
    assert (a.size, a.rate, a.name, a.flag) == (5, 0.5, "a", True)
    assert a.spec == "alpha:flag=true,size=5" and a.registry_name == "alpha"
    assert a.params == {"size": 5, "rate": 0.5, "name": "a", "flag": True}
    assert reg.create("beta:k=4") == ("beta", 4)  # tuples cannot carry attributes: still created
    e = reg.entry("alpha")
    assert e.describe() == "An alpha widget." and e.param_docs == {"size": "how big.", "rate": "how fast."}
    d = {x["name"]: x for x in reg.describe()}
    assert d["alpha"]["params"] == {"size": 3, "rate": 0.5, "name": "a", "flag": False}
    assert d["random"]["form"] == "random_p<rate>"


def test_parametric_names(reg):
    assert reg.create("random_p0.05") == ("random", 0.05, 50)
    assert reg.create("random_p1e-3:patterns=10") == ("random", 0.001, 10)
    # the canonical form keeps the parameter in the name when the name parses back to the same value
    assert reg.canonical("random_p0.05") == "random_p0.05"
    assert reg.canonical("random:p=0.05") == "random_p0.05"
    assert reg.resolve(reg.canonical("random_p1e-3:patterns=10"))[1] == {"p": 0.001, "patterns": 10}
    with pytest.raises(SpecError, match="sets 'p' twice"):
        reg.resolve("random_p0.05:p=0.1")
    with pytest.raises(SpecError, match="parametric forms: random_p<rate>"):
        reg.resolve("randm_p0.05")


def test_registration_errors(reg):
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(lambda: None)

    def other(x: int = 1):
        return x

    reg.register("alpha", override=True)(other)
    assert reg.create("alpha:x=2") == 2
    with pytest.raises(ValueError, match="invalid widget name"):
        reg.register("9bad")(other)
    with pytest.raises(TypeError, match="has no default"):
        reg.register("nodefault")(lambda x: x)
    reg.unregister("alpha")
    reg.unregister("alpha")  # idempotent
    assert "alpha" not in reg.names()


def test_creation_errors_are_spec_errors(reg):
    @reg.register("picky")
    class Picky:
        def __init__(self, n: int = 1):
            if n < 0:
                raise SpecError("n must be >= 0")  # the contract: a bad parameter value is a SpecError
            if n == 7:
                raise ValueError("a bug inside the constructor")

    with pytest.raises(SpecError, match="widget 'picky:n=-1': n must be >= 0"):
        reg.create("picky:n=-1")
    # any other exception is a bug: it propagates unchanged, never disguised as bad input
    with pytest.raises(ValueError, match="a bug inside") as info:
        reg.create("picky:n=7")
    assert not isinstance(info.value, SpecError)
    with pytest.raises(SpecError, match="has no parameter 'm'"):
        reg.create("picky", m=3)
    with pytest.raises(SpecError, match="unknown widget 'zzz'"):
        reg.create("zzz")


# --------------------------------------------------------------------------------- third-party entry points

def _make_plugin(root, pkg, entry_points):
    """An importable package plus a *.dist-info with METADATA and entry_points.txt, under ``root``."""
    (root / pkg).mkdir()
    (root / pkg / "__init__.py").write_text("")
    (root / pkg / "mod.py").write_text(textwrap.dedent('''
        from bitbench import SpecError
        from bitbench.defenses.base import Defense
        from bitbench.defenses.quantization import rquant


        class MyDefense(Defense):
            """A third-party defense: RQuant with a configurable width.

            Args:
                bits: bits per weight.
            """

            def __init__(self, bits: int = 6, w_max: float = 0.2):
                if not 2 <= bits <= 8:
                    raise SpecError("bits must be in 2..8")
                self.bits = bits
                self.w_max = w_max

            def scheme(self):
                return rquant(self.bits, self.w_max)
        '''))
    (root / pkg / "broken.py").write_text("raise ImportError('plugin is broken')\n")
    dist = root / f"{pkg}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    DEFENSES.load_entry_points()  # the installed plugins first, so the test controls when ours is found
    pkg = "bitbench_test_plugin_pkg"
    _make_plugin(tmp_path, pkg, textwrap.dedent(f"""
        [bitbench.defenses]
        mydef = {pkg}.mod:MyDefense
        brokendef = {pkg}.broken:Nothing

        [bitbench.attacks]
        notadefense = {pkg}.mod:MyDefense
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    DEFENSES.unregister("mydef")
    DEFENSES.entry_point_errors.pop("brokendef", None)
    for m in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[m]


def test_third_party_defense_found_by_name(plugin):
    assert "mydef" not in list_defenses()
    DEFENSES.load_entry_points(force=True)
    try:
        assert list_defenses("my*") == ["mydef"]
        assert "mydef" in list_defenses() and "notadefense" not in list_defenses()
        d = create_defense("mydef:bits=4")
        assert type(d).__module__ == f"{plugin}.mod" and d.bits == 4 and d.spec == "mydef:bits=4"
        assert d.scheme().bits == 4 and d.scheme().w_max == 0.2
        assert DEFENSES.entry("mydef").source == f"entry point {plugin}.mod:MyDefense"
        assert DEFENSES.entry("mydef").param_docs["bits"] == "bits per weight."
        assert DEFENSES.canonical("mydef:bits=6") == "mydef"
        with pytest.raises(SpecError, match="bits must be in 2..8"):
            create_defense("mydef:bits=12")
        # a broken plugin does not break the registry; its error is recorded
        assert "plugin is broken" in DEFENSES.entry_point_errors["brokendef"]
        assert "brokendef" not in list_defenses()
        # loading again does not duplicate or fail
        DEFENSES.load_entry_points(force=True)
        assert list_defenses("my*") == ["mydef"]
    finally:
        DEFENSES.unregister("mydef")
    assert list_defenses("my*") == []
    assert {"normal", "rquant", "clip", "randbet"} <= set(list_defenses())


def test_third_party_defense_trains(plugin):
    """The plugged-in defense works end to end through the Defense contract (tiny run)."""
    import torch

    from bitbench.models import build_model
    from bitbench.defenses.training import TrainConfig

    DEFENSES.load_entry_points(force=True)
    d = create_defense("mydef:bits=4")
    model = build_model("mlp", num_classes=3, in_channels=1, image_size=4, width=8, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 4, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    d.train(model, x, y, TrainConfig(epochs=1, batch_size=16, progress=False))
    qm = d.quantize(model)
    assert qm.codes.dtype == torch.uint8 and int(qm.codes.max()) < 16
    assert float(qm.dequantize().abs().max()) <= 0.2 * (1 + 1e-6)


def test_registry_with_a_module_entry_point(tmp_path, monkeypatch):
    """An entry point may name a module: importing it runs its registration decorators."""
    pkg = "bitbench_test_plugin_mod"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text(textwrap.dedent('''
        from bitbench.configs.registry import Registry
        REG = Registry("gadget", entry_point_group="bitbench.test_gadgets")
        '''))
    (tmp_path / pkg / "plug.py").write_text(textwrap.dedent(f'''
        from {pkg} import REG

        @REG.register("g1")
        def g1(n: int = 2):
            return n
        '''))
    dist = tmp_path / f"{pkg}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[bitbench.test_gadgets]\nplug = {pkg}.plug\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import importlib

        REG = importlib.import_module(pkg).REG
        assert REG.names() == ["g1"]  # names() loads the entry points once
        assert REG.create("g1:n=5") == 5
    finally:
        for m in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
            del sys.modules[m]


def test_aliases_and_doc_override():
    r = Registry("widget")

    def factory(n: int = 1):
        return n

    r.register("gamma", aliases=("g", "gam-ma"), doc="The gamma widget.\n\nArgs:\n    n: how many.")(factory)
    assert r.names() == ["gamma"] and r.create("g:n=3") == 3 and r.create("gam-ma") == 1
    assert r.entry("g").name == "gamma" and r.canonical("g:n=2") == "gamma:n=2"
    (d,) = r.describe()
    assert d["aliases"] == ["g", "gam-ma"] and d["summary"] == "The gamma widget." and d["param_docs"] == {
        "n": "how many."}
    with pytest.raises(ValueError, match="alias 'g' is already a name or an alias"):
        r.register("delta", aliases=("g",))(lambda k=1: k)
    r.unregister("gamma")
    with pytest.raises(SpecError, match="unknown widget 'g'"):
        r.create("g")


def test_an_entry_point_that_cannot_be_registered_is_reported_not_raised(tmp_path, monkeypatch):
    """A plug-in whose factory breaks the contract (a parameter without a default) is listed as broken; the
    registry keeps working."""
    pkg = "bitbench_test_plugin_nodefault"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("def build(num_classes):\n    return num_classes\n"
                                               "def fine(k=2):\n    return k\n")
    dist = tmp_path / f"{pkg}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {pkg}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[bitbench.test_widgets]\nnodefault = {pkg}:build\nfine = {pkg}:fine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = Registry("widget", entry_point_group="bitbench.test_widgets")
    try:
        assert r.names() == ["fine"] and r.create("fine") == 2
        assert "parameter 'num_classes' has no default" in r.entry_point_errors["nodefault"]
    finally:
        for m in [m for m in sys.modules if m.startswith(pkg)]:
            del sys.modules[m]
