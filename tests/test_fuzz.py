"""Fuzzing (seeded, bounded in time): random spec strings, random rates, and random JSON, random bytes and mutations
of valid files for every kind of file the tool reads. The only allowed outcomes are exit 0 with valid output or exit
2 with a one-line message (bad input); a traceback (a program bug) or any other exit code fails the test, which
prints the failing case.

The command line runs in-process (``bitbench.cli.main``) on a tiny suite (untrained LeNet, 1 pattern, 20 images).
Each kind of input gets a share of :data:`BUDGET_S`; the cases are drawn from one seeded generator, so a failure is
reproducible by its seed and case number (printed).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import string
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bitbench.cli import main as cli_main
from bitbench.configs.errors import UsageError
from bitbench.configs.record import record_digest
from bitbench.configs.registries import ATTACKS, DEFENSES
from bitbench.defenses.io import save_checkpoint
from bitbench.defenses.quantization import rquant
from bitbench.defenses.quantized_model import QuantizedModel

# a longer hunt: BITBENCH_FUZZ_SEED=7 BITBENCH_FUZZ_BUDGET=300 python -m pytest -q tests/test_fuzz.py -s
SEED = int(os.environ.get("BITBENCH_FUZZ_SEED", "20260"))
BUDGET_S = float(os.environ.get("BITBENCH_FUZZ_BUDGET", "20"))
CASE_S = 1.5  # one command's share; a longer one is interrupted (the harness's Ctrl-C path) and not judged
KINDS = ("specs", "rates", "suite", "record", "entry", "submitted", "checkpoint", "quantized", "error_map",
         "dataset")
SUITE = """\
name = "tiny"
dataset = "mnist5k"
model = "lenet"
defenses = ["rquant"]
rates = [0.01]
patterns = 1
n_eval = 20
[train]
epochs = 0
"""


# -- random material -----------------------------------------------------------------------------------------------
def _text(rng: random.Random, n: int | None = None) -> str:
    alphabet = string.ascii_letters + string.digits + ":,=+|*._-/% \t" + "\x00\xff\u00e4\u2028"
    return "".join(rng.choice(alphabet) for _ in range(n if n is not None else rng.randint(0, 12)))


def _scalar(rng: random.Random):
    return rng.choice([
        lambda: rng.randint(-3, 40), lambda: rng.choice([0, 1, 2, 7, 8, 16, 32, 33, 2 ** 31, 2 ** 64, -(2 ** 63)]),
        lambda: rng.choice([0.0, 1e-45, 1e-308, 0.5, 1.0, 1.5, 1e38, 1e308, -0.1, float("nan"), float("inf")]),
        lambda: rng.random(), lambda: rng.choice(["none", "true", "false", "fixed", "channel", "group:0", "group:3",
                                                  "all", "sign|exponent", "", "-1", "1e999", "0x10", "..", "/"]),
        lambda: _text(rng),
    ])()


def _value_text(rng: random.Random) -> str:
    v = _scalar(rng)
    return repr(v) if isinstance(v, float) else str(v)


def _spec(rng: random.Random, registry) -> str:
    entries = [e for e in registry.describe()]
    e = rng.choice(entries)
    name = e["name"]
    if e.get("form") and rng.random() < 0.5:  # a parametric name: random_p{p}, bfa_n{flips}
        name = e["form"].split("{")[0] + _value_text(rng)
    keys = list(e.get("params") or {}) + ["nosuch", "bits", "layers", "file", ""]
    kv = [f"{rng.choice(keys)}={_value_text(rng)}" for _ in range(rng.randint(0, 3))]
    spec = name + (":" + ",".join(kv) if kv else "")
    if registry is DEFENSES and rng.random() < 0.3:
        key = rng.choice(["bit", "group", "word", "policy", "key"])
        spec += "+" + rng.choice(["secded", "radar", "nosuch"]) + (f":{key}={_value_text(rng)}" if rng.random() < 0.6
                                                                    else "")
    if rng.random() < 0.1:
        spec = _text(rng, rng.randint(0, 30))
    return spec


def _json_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 4 or r < 0.4:
        if rng.random() < 0.9:
            return rng.choice([None, True, False, _scalar(rng), _text(rng)])
        v: list = []
        for _ in range(300):  # nested deeper than any file of the project
            v = [v]
        return v
    if r < 0.7:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_text(rng) if rng.random() < 0.3 else rng.choice(["name", "suite", "format", "results", "rerr", "rate"]):
            _json_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _mutate(rng: random.Random, obj):
    """A copy of a JSON object with one field replaced, removed or added somewhere inside."""
    obj = json.loads(json.dumps(obj))
    node = obj
    for _ in range(rng.randint(0, 3)):
        kids = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
        kids = [(k, v) for k, v in kids if isinstance(v, (dict, list)) and v]
        if not kids:
            break
        node = rng.choice(kids)[1]
    if isinstance(node, dict) and node:
        k = rng.choice(list(node))
        op = rng.random()
        if op < 0.6:
            node[k] = _json_value(rng, 3)
        elif op < 0.8:
            del node[k]
        else:
            node[_text(rng) or "x"] = _json_value(rng, 3)
    elif isinstance(node, list) and node:
        node[rng.randrange(len(node))] = _json_value(rng, 3)
    return obj


def _dumps(rng: random.Random, obj) -> bytes:
    if rng.random() < 0.05:
        return b"[" * 100_000 + b"]" * 100_000  # deeper than any JSON parser's recursion
    text = json.dumps(obj, allow_nan=True)
    return text.encode("utf-8") if rng.random() < 0.95 else text.encode("utf-16")


def _bytes(rng: random.Random, base: bytes | None = None) -> bytes:
    if base is not None and rng.random() < 0.7:  # a few flipped bytes, or a cut
        b = bytearray(base)
        if rng.random() < 0.3:
            return bytes(b[:rng.randrange(len(b) + 1)])
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))


# -- the runner ------------------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, root: Path):
        self.root = root
        (root / "tiny.toml").write_text(SUITE)
        self.common = ["--cache-dir", str(root / "cache"), "--results-dir", str(root / "results"), "--no-progress"]
        self.cut = []  # cases interrupted after CASE_S (a random spec may ask for much work: 10^6 patterns)

    def cli(self, *argv, limit: float | None = CASE_S):
        out, err = io.StringIO(), io.StringIO()

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, limit or 0)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = cli_main(list(argv))
                except SystemExit as e:  # argparse: 2 with its usage message
                    rc = e.code
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        if limit and rc == 130 and "interrupted" in err.getvalue():  # cut by the test, not the tool's outcome
            self.cut.append(argv)
            return 0, "[]", ""
        return rc, out.getvalue(), err.getvalue()

    def run(self, *argv, suite=True, limit: float | None = CASE_S):
        argv = ["run", *argv, *self.common, "--format", "json"]
        if suite and "--suite" not in argv and "--entry" not in argv:
            argv += ["--suite", str(self.root / "tiny.toml")]
        return self.cli(*argv, limit=limit)


def _allowed(case: str, rc, out: str, err: str, *, json_out: bool = True) -> None:
    assert "Traceback" not in err, f"{case}: a traceback\n{err[-3000:]}"
    if rc == 0:
        if json_out:
            data = json.loads(out)  # valid output
            assert isinstance(data, list) and all("rerr" in c["records"][0]["patterns"] for c in data), case
        return
    assert rc == 2, f"{case}: exit {rc}\n{err[-3000:]}"
    assert err.strip(), f"{case}: exit 2 without a message"


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    """Valid files to mutate: a record, an entry (with its checkpoint), a checkpoint, a quantized model."""
    root = tmp_path_factory.mktemp("fuzz-material")
    r = Runner(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert r.cli("train", "--suite", "tiny.toml", "--save-weights", "w", *r.common, limit=None)[0] == 0
        assert r.run("--attack", "random_p0.01", limit=None)[0] == 0
        (rec,) = (root / "results").rglob("*.json")
        (weights,) = (root / "w").glob("*.pt")
        rc, _, err = r.cli("submit", str(rec), "--checkpoint", str(weights), "--suite-file", "tiny.toml", "--entries",
                           "ents", "--name", "row", limit=None)
        assert rc == 0, err
    finally:
        os.chdir(cwd)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    entry = json.loads((root / "ents" / "tiny" / "row.json").read_text())
    return {"record": json.loads(rec.read_text()), "entry": entry,
            "weights": weights.read_bytes(), "qm": QuantizedModel.from_module(net, rquant(8)).state_dict()}


def test_fuzz(tmp_path, monkeypatch, material, one_thread):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED)
    r = Runner(tmp_path)
    share = BUDGET_S / len(KINDS)
    counts = {}
    for kind in KINDS:
        deadline = time.monotonic() + share
        n = 0
        while time.monotonic() < deadline or n < 3:
            n += 1
            case = f"seed {SEED}, {kind} case {n}"
            globals()[f"_fuzz_{kind}"](rng, r, tmp_path, material, case)
        counts[kind] = (n, round(time.monotonic() - deadline + share, 1))
    print("cases (number, seconds):", counts, "; interrupted:", len(r.cut), [" ".join(a[:5]) for a in r.cut][:5])
    assert len(r.cut) <= sum(n for n, _ in counts.values()) // 4, "most cases were too slow to be judged"


# -- one function per kind of input: draw one case, check its outcome -------------------------------------------------
def _fuzz_specs(rng, r, root, material, case):
    d, a = _spec(rng, DEFENSES), _spec(rng, ATTACKS)
    for reg, spec in ((DEFENSES, d), (ATTACKS, a)):
        try:
            reg.create(spec)
        except UsageError:
            pass
    if rng.random() < 0.25:  # the whole command: validation, preflight, evaluation
        rc, out, err = r.run("--defense", d, "--attack", a)
        _allowed(f"{case}: run --defense {d!r} --attack {a!r}", rc, out, err)


def _fuzz_rates(rng, r, root, material, case):
    rates = ",".join(_value_text(rng) + rng.choice(["", "%"]) for _ in range(rng.randint(0, 3)))
    argv = ["--rates", rates, "--defense", "rquant"]
    if rng.random() < 0.7:  # parsing only: a rate that parses is one of few
        rc, out, err = r.cli("run", *argv, "--suite", "nosuch-suite")
        assert "Traceback" not in err and rc == 2, (case, rates, err)
        return
    rc, out, err = r.run(*argv)
    _allowed(f"{case}: --rates {rates!r}", rc, out, err)


def _fuzz_suite(rng, r, root, material, case):
    path = root / "fz.toml"
    lines = SUITE.splitlines()
    choice = rng.random()
    if choice < 0.2:
        path.write_bytes(_bytes(rng, SUITE.encode()))
    else:
        i = rng.randrange(len(lines))
        key = rng.choice(["name", "dataset", "model", "bits", "rates", "patterns", "base_seed", "n_eval", "eval_split",
                          "headline_rate", "defenses", "attacks", "train_seed", "data_dir", "nosuch"])
        val = rng.choice([json.dumps(_scalar(rng)) if not isinstance(_scalar(rng), float) else "1.5", "[]", "[1e999]",
                          '["rquant:bits=none"]', "[0.5, 0.5]", '"../x"', "{}", "-1", "1e400", '"test[0:0]"'])
        lines.insert(i if rng.random() < 0.5 else 0, f"{key} = {val}")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogateescape")
    rc, out, err = r.run("--suite", str(path), "--attack", "random_p0.01")
    _allowed(f"{case}: suite file {path.read_bytes()[:300]!r}", rc, out, err)


def _fuzz_record(rng, r, root, material, case):
    root = root / "rec"  # its own results folder: one record
    root.mkdir(exist_ok=True)
    r = Runner(root)
    rc, out, err = r.run("--attack", "random_p0.01")
    _allowed(case, rc, out, err)
    (path,) = (root / "results").rglob("*.json")
    if rng.random() < 0.5:
        obj = _mutate(rng, material["record"])
        if isinstance(obj, dict) and rng.random() < 0.8:
            try:
                obj["digest"] = record_digest(obj)  # an intact digest: the content itself is validated
            except (TypeError, ValueError, RecursionError):
                pass
        data = _dumps(rng, obj)
    else:
        data = _dumps(rng, _json_value(rng)) if rng.random() < 0.5 else _bytes(rng, path.read_bytes())
    path.write_bytes(data)
    rc, out, err = r.run("--attack", "random_p0.01")
    _allowed(f"{case}: cached record {data[:300]!r}", rc, out, err)
    assert rc == 0, f"{case}: a damaged cached record is recomputed, not an error\n{err}"
    assert json.loads(path.read_text())["format"] == material["record"]["format"]


def _fuzz_entry(rng, r, root, material, case):
    d = root / "ents" / "tiny"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "row.json"
    obj = _mutate(rng, material["entry"]) if rng.random() < 0.7 else _json_value(rng)
    path.write_bytes(_dumps(rng, obj) if rng.random() < 0.9 else _bytes(rng, _dumps(rng, material["entry"])))
    rc, out, err = r.cli("leaderboard", "--entries", str(root / "ents"), "--configs", str(root), "--out", "-")
    _allowed(f"{case}: entry {path.read_bytes()[:300]!r}", rc, out, err, json_out=False)
    if rc == 0:
        assert "GENERATED FILE" in out and "| " in out, case


def _fuzz_submitted(rng, r, root, material, case):
    path = root / "sub.json"
    obj = _mutate(rng, material["record"])
    if isinstance(obj, dict) and rng.random() < 0.8:
        try:
            obj["digest"] = record_digest(obj)
        except (TypeError, ValueError, RecursionError):
            pass
    path.write_bytes(_dumps(rng, obj) if rng.random() < 0.8 else _bytes(rng))
    rc, out, err = r.cli("submit", str(path), "--suite-file", str(root / "tiny.toml"), "--entries",
                         str(root / "sub-ents"))
    _allowed(f"{case}: submitted {path.read_bytes()[:300]!r}", rc, out, err, json_out=False)


def _fuzz_checkpoint(rng, r, root, material, case):
    path = root / "ck.pt"
    if rng.random() < 0.3:  # a valid archive of another content
        sd = torch.load(io.BytesIO(material["weights"]), weights_only=True)
        k = rng.choice(list(sd))
        sd[k] = rng.choice([lambda t: t.double() * 1e300, lambda t: t[:1], lambda t: t.half(),
                            lambda t: torch.full_like(t, float("nan")), lambda t: t.to(torch.int64)])(sd[k])
        torch.save(sd if rng.random() < 0.8 else {"model": sd, "x": [1, 2]}, path)
    else:
        path.write_bytes(_bytes(rng, material["weights"]))
    rc, out, err = r.run("--checkpoint", str(path), "--attack", "random_p0.01")
    _allowed(f"{case}: checkpoint", rc, out, err)


def _fuzz_quantized(rng, r, root, material, case):
    path = root / "qm.pt"
    d = {k: (v.clone() if isinstance(v, torch.Tensor) else json.loads(json.dumps(v)) if k != "context" else
             {kk: vv.clone() for kk, vv in v.items()}) for k, v in material["qm"].items()}
    k = rng.choice(list(d))
    d[k] = rng.choice([lambda: _json_value(rng, 3), lambda: None, lambda: torch.zeros(rng.randint(0, 20)),
                       lambda: torch.full((4,), float("nan")), lambda: [[rng.randint(-1, 3)] for _ in range(4)],
                       lambda: {"lo": torch.zeros(4), "hi": torch.ones(4), "step": torch.ones(4)},
                       lambda: {"bits": rng.randint(-1, 40), "range": _text(rng)}])()
    try:
        save_checkpoint(d, path)
    except TypeError:  # content the writer itself refuses
        return
    if rng.random() < 0.2:
        path.write_bytes(_bytes(rng, path.read_bytes()))
    try:
        QuantizedModel.load(path)
    except UsageError:
        pass


def _fuzz_error_map(rng, r, root, material, case):
    path = root / "map.npz"
    choice = rng.random()
    if choice < 0.3:
        path.write_bytes(_bytes(rng))
    else:
        shape = tuple(rng.randint(0, 3) for _ in range(rng.randint(0, 4)))
        key = rng.choice(["p", "stuck", "p01", "arr_0", "x"])
        arr = rng.choice([lambda: np.random.default_rng(rng.randrange(99)).random(shape) * rng.choice([1, 2, -1]),
                          lambda: np.full(shape, float("nan")), lambda: np.zeros(shape, dtype=np.int8) - 2,
                          lambda: np.zeros(shape, dtype=np.int64), lambda: np.array([{"a": 1}], dtype=object)])()
        try:
            np.savez(path, **{key: arr})
        except (ValueError, TypeError):
            return
    rc, out, err = r.run("--attack", f"errmap:file={path},tile=true")
    _allowed(f"{case}: error map", rc, out, err)


def _fuzz_dataset(rng, r, root, material, case):
    path = root / "data.npz"
    g = np.random.default_rng(rng.randrange(1000))
    n = rng.randint(0, 12)
    arrays = {"train_images": g.integers(0, 255, (n, 8, 8), dtype=np.uint8),
              "train_labels": g.integers(0, 3, n), "test_images": g.integers(0, 255, (n, 8, 8), dtype=np.uint8),
              "test_labels": g.integers(0, 3, n)}
    k = rng.choice(list(arrays) + ["num_classes"])
    arrays[k] = rng.choice([lambda: np.array(2 ** 40), lambda: g.random((n, 3)) * 1e30, lambda: np.full(n, np.nan),
                            lambda: np.zeros((n, 8, 8, 7)), lambda: np.array([], dtype=np.int8),
                            lambda: g.integers(-5, 2 ** 40, n), lambda: np.array(["a"] * n)])()
    np.savez(path, **arrays)
    if rng.random() < 0.2:
        path.write_bytes(_bytes(rng, path.read_bytes()))
    rc, out, err = r.run("--dataset", "npz", "--data-dir", str(path), "--attack", "random_p0.01", suite=False)
    _allowed(f"{case}: npz dataset {k}", rc, out, err)
