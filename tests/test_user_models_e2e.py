"""A user's own model and data end to end: a model file and checkpoint through the command line (``module:function``
and ``file.py:function``), a third-party package with ``bitbench.models`` and ``bitbench.datasets`` entry points,
the Python API returning the CLI's record, bad checkpoints exiting 2, and re-running a leaderboard entry's attacks
on the checkpoint it names."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import bitbench
from bitbench import cli
from bitbench.configs.fileio import sha256_file
from bitbench.configs.registries import DATASETS, MODELS
from bitbench.data import DataError, load_dataset
from bitbench.user_model import checkpoint_weights_digest, tensor_digest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_MODEL = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    """A user's convnet (not from bitbench)."""

    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 5, stride=2)
        self.norm = nn.LayerNorm([width, 12, 12])
        self.fc = nn.Linear(width * 12 * 12, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.norm(self.conv(x))).flatten(1))


def build(num_classes=10, width=8):
    return Net(num_classes, width)
'''

USER_DATA = '''
import numpy as np
from bitbench.data import dataset_from_arrays


def load(data_dir=None, n_eval=None):
    """The user's digits (an .npz file).

    Args:
        data_dir: the .npz file.
        n_eval: keep the first n_eval evaluation images.
    """
    z = np.load(data_dir)
    return dataset_from_arrays("userdata", z["train_images"], z["train_labels"], z["test_images"],
                               z["test_labels"], n_eval=n_eval, info={"source": str(data_dir)})
'''


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A user's folder: model module, a briefly trained checkpoint, an .npz dataset, and a package with entry
    points (a fake dist-info, as an installed plug-in has)."""
    root = tmp_path_factory.mktemp("user")
    (root / "usernet.py").write_text(USER_MODEL)
    site = root / "site"
    pkg = site / "bitbench_user_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(USER_MODEL)
    (pkg / "data.py").write_text(USER_DATA)
    dist = site / "bitbench_user_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bitbench_user_plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bitbench.models]\nusernet = bitbench_user_plugin.nets:build\n\n"
                                           "[bitbench.datasets]\nuserdata = bitbench_user_plugin.data:load\n")
    ds = load_dataset("mnist5k")
    data = root / "digits.npz"
    np.savez(data, train_images=(ds.train_x[:200, 0] * 255).round().to(torch.uint8).numpy(),
             train_labels=ds.train_y[:200].numpy(),
             test_images=(ds.test_x[:330, 0] * 255).round().to(torch.uint8).numpy(),
             test_labels=ds.test_y[:330].numpy())
    sys.path.insert(0, str(root))
    try:
        import usernet
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(0)
    net = usernet.build()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    with torch.random.fork_rng():
        for _ in range(2):
            for i in range(0, 4000, 100):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(ds.train_x[i:i + 100]), ds.train_y[i:i + 100]).backward()
                opt.step()
    torch.save(net.state_dict(), root / "net.pt")
    del sys.modules["usernet"]
    return {"root": root, "site": site, "data": data, "ckpt": root / "net.pt", "build": usernet.build}


def records_of(stdout: str) -> list[dict]:
    """The records in ``run --format json``'s output (a list of cells, each with its models' records)."""
    return [r for c in json.loads(stdout) for r in c["records"]]


def bench(args, cwd, *, site=None, check=0):
    env = dict(os.environ, BITBENCH_CACHE=str(cwd / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(([str(site)] if site else []) + [ROOT])
    p = subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


RUN = ["--defense", "rquant", "--attack", "random_p0.02", "--patterns", "4", "--format", "json", "--no-progress"]
VOLATILE = {"date", "timings", "device", "digest"}  # the digest covers the date


def test_module_function_and_api_give_the_same_record(user):
    """The acceptance check: a user's model file + checkpoint through the command line, and the Python API with
    the same inputs, return the same record (every number, the configuration hash; only date/timings differ)."""
    p = bench(["run", "--model", "usernet:build", "--checkpoint", str(user["ckpt"]), "--dataset", "npz",
               "--data-dir", str(user["data"]), *RUN], user["root"])
    (cli_rec,) = records_of(p.stdout)
    assert cli_rec["model"] == "usernet:build" and cli_rec["model_source"] == "user"
    assert cli_rec["dataset"] == "npz" and cli_rec["n_eval"] == 297 and cli_rec["eval_split"] == "test[0:297]"
    assert cli_rec["checkpoint"] == str(user["ckpt"]) and cli_rec["train_seed"] is None
    assert cli_rec["timings"]["train"] == 0 and cli_rec["timings"]["trained_now"] is False
    assert cli_rec["clean"]["err"] < 0.3, "the user's checkpoint (trained briefly) is far better than chance"
    rec = bitbench.evaluate_model(user["build"](), load_dataset("npz", str(user["data"])), format="rquant",
                                  attack="random_p0.02", patterns=4, checkpoint=str(user["ckpt"]),
                                  name="usernet:build")
    api = rec.to_json()
    assert {k: v for k, v in api.items() if k not in VOLATILE} == {k: v for k, v in cli_rec.items()
                                                                   if k not in VOLATILE}
    # the same weights as an in-memory module (no file): same numbers; the hash no longer holds a file digest
    net = user["build"]()
    net.load_state_dict(torch.load(user["ckpt"], weights_only=True))
    mem = bitbench.evaluate_model(net, load_dataset("npz", str(user["data"])), format="rquant",
                                  attack="random_p0.02", patterns=4, name="usernet:build")
    assert mem.per_pattern_rerr == cli_rec["patterns"]["rerr"] and mem.clean_err == cli_rec["clean"]["err"]
    assert mem.weights_sha256 == cli_rec["weights_sha256"] and mem.checkpoint_sha256 is None
    assert mem.config_hash != cli_rec["config_hash"]
    # a file path reference builds the same model: same numbers
    p = bench(["run", "--model", "./usernet.py:build:width=8", "--checkpoint", "net.pt", "--dataset", "npz",
               "--data-dir", "digits.npz", *RUN], user["root"])
    (by_file,) = records_of(p.stdout)
    assert by_file["model"] == "./usernet.py:build" and by_file["model_options"] == {"width": 8}
    assert by_file["patterns"]["rerr"] == cli_rec["patterns"]["rerr"]


def test_entry_point_plugins_for_model_and_dataset(user):
    """A third-party package's `bitbench.models` and `bitbench.datasets` entry points: listed, and run end to end
    with --checkpoint (the plug-in dataset reads the same file: the same numbers as the npz reader)."""
    p = bench(["list", "all", "user*", "--json"], user["root"], site=user["site"])
    listed = json.loads(p.stdout)
    (model,) = listed["models"]
    assert model["name"] == "usernet" and model["params"] == {"width": 8}
    assert model["source"] == "entry point bitbench_user_plugin.nets:build"
    (data,) = listed["datasets"]
    assert data["name"] == "userdata" and data["summary"] == "The user's digits (an .npz file)."
    p = bench(["run", "--model", "usernet", "--checkpoint", str(user["ckpt"]), "--dataset", "userdata",
               "--data-dir", str(user["data"]), *RUN], user["root"], site=user["site"])
    (rec,) = records_of(p.stdout)
    assert rec["model"] == "usernet" and rec["dataset"] == "userdata" and rec["model_source"] == "user"
    ref = bitbench.evaluate_model(user["build"](), load_dataset("npz", str(user["data"])), format="rquant",
                                  attack="random_p0.02", patterns=4, checkpoint=str(user["ckpt"]))
    assert rec["patterns"]["rerr"] == ref.per_pattern_rerr and rec["clean"]["err"] == ref.clean_err


def test_plugins_in_process(user, monkeypatch):
    """The registries find the entry points in this process too (and the built-ins stay)."""
    monkeypatch.syspath_prepend(str(user["site"]))
    MODELS.load_entry_points(force=True)
    DATASETS.load_entry_points(force=True)
    try:
        assert "usernet" in bitbench.list_models() and "vit" in bitbench.list_models()
        assert "userdata" in bitbench.list_datasets("user*")
        ds = load_dataset("userdata", str(user["data"]), n_eval=50)
        assert ds.name == "userdata" and ds.test_x.shape == (50, 1, 28, 28) and ds.attack_x.shape[0] == 33
        m = bitbench.build_model("usernet:width=4", num_classes=10, in_channels=1, image_size=28, seed=0)
        assert m.conv.out_channels == 4 and m.build_spec["name"] == "usernet"
    finally:
        MODELS.unregister("usernet")
        DATASETS.unregister("userdata")
        for mod in [m for m in sys.modules if m.startswith("bitbench_user_plugin")]:
            del sys.modules[mod]


def test_dataset_registry_contract(monkeypatch):
    @bitbench.register_dataset("tiny_test_set")
    def tiny(seed: int = 0):
        """Random 6x6 images (no n_eval parameter: load_dataset applies it)."""
        g = np.random.default_rng(seed)
        return bitbench.dataset_from_arrays("tiny_test_set", g.integers(0, 256, (20, 6, 6), dtype=np.uint8),
                                            g.integers(0, 3, 20), g.integers(0, 256, (30, 6, 6), dtype=np.uint8),
                                            g.integers(0, 3, 30))

    @bitbench.register_dataset("not_a_dataset")
    def bad():
        return [1, 2]

    try:
        ds = load_dataset("tiny_test_set:seed=3")
        assert ds.test_x.shape == (27, 1, 6, 6) and ds.attack_x.shape == (3, 1, 6, 6)
        assert load_dataset("tiny_test_set", n_eval=10).test_y.shape == (10,)
        with pytest.raises(DataError, match="dataset 'tiny_test_set' has no parameter 'sed'. Did you mean seed"):
            load_dataset("tiny_test_set:sed=3")
        with pytest.raises(DataError, match="n_eval=40 exceeds the 27 evaluation images"):
            load_dataset("tiny_test_set", n_eval=40)
        with pytest.raises(DataError, match="returned a list, expected a bitbench.data.Dataset"):
            load_dataset("not_a_dataset")
    finally:
        DATASETS.unregister("tiny_test_set")
        DATASETS.unregister("not_a_dataset")


@pytest.mark.parametrize("case,expect", [
    ("keys", "does not match the model usernet:build: missing keys (in the model, not in the file): norm.weight, "
             "norm.bias; unexpected keys (in the file, not in the model): extra"),
    ("shapes", "wrong shapes: fc.weight: file [3, 1152], model [10, 1152]"),
    ("notdict", "it holds a list, expected a dict"),
    ("unsafe", "it holds pickled Python objects, not only tensors and plain containers (it references posix.system)"),
])
def test_bad_checkpoint_exits_2(user, tmp_path, capsys, monkeypatch, case, expect):
    monkeypatch.chdir(user["root"])
    sd = torch.load(user["ckpt"], weights_only=True)
    path = tmp_path / f"{case}.pt"
    if case == "keys":
        sd = {k: v for k, v in sd.items() if not k.startswith("norm")} | {"extra": torch.zeros(1)}
    elif case == "shapes":
        sd["fc.weight"] = torch.zeros(3, 1152)
    elif case == "notdict":
        sd = list(sd.values())
    elif case == "unsafe":
        sd = {"w": torch.zeros(1), "x": _Shell()}
    torch.save(sd, path)
    code = cli.main(["run", "--model", "usernet:build", "--checkpoint", str(path), "--defense", "rquant",
                     "--attack", "random_p0.01", "--patterns", "1", "--no-progress", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"error: checkpoint {path}: " in err and expect in err, err
    assert "weights_only=False" not in err


class _Shell:
    def __reduce__(self):
        return (os.system, ("echo the checkpoint ran code",))


def test_training_recipes_are_refused_for_a_user_checkpoint(user, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(user["root"])
    args = ["run", "--model", "usernet:build", "--checkpoint", str(user["ckpt"]), "--attack", "random_p0.01",
            "--patterns", "1", "--no-progress", "--cache-dir", str(tmp_path), "--results-dir", str(tmp_path / "r"),
            "--n-eval", "50"]
    assert cli.main(args + ["--defense", "randbet"]) == 2
    assert "defense 'randbet' is a training recipe" in capsys.readouterr().err
    # without --defense: the suite's storage formats, with a note on the recipes left out
    assert cli.main(args + ["--format", "json"]) == 0
    out = capsys.readouterr()
    assert [r["defense"] for r in records_of(out.out)] == [
        "normal", "rquant", "float32", "bfloat16", "rquant:granularity=channel", "rquant:bits=4,granularity=group:32",
        "rquant+secded"]
    assert "clip, randbet:p=0.1, clip+radar of suite 'default' are training recipes" in out.err


def test_rerun_a_leaderboard_entry_on_its_checkpoint(tmp_path, capsys):
    """train -> records -> entry naming the saved weights -> `run --entry` reproduces every number; a different
    file or an entry without a checkpoint is refused."""
    from bitbench.leaderboard.entries import load_entry, submit

    suite = tmp_path / "tiny.toml"
    suite.write_text(textwrap.dedent("""
        name = "tiny"
        dataset = "mnist5k"
        model = "lenet"
        n_eval = 200
        defenses = ["clip"]
        rates = [0.01, 0.05]
        patterns = 3
        [model_options]
        norm = "none"
        [train]
        epochs = 1
        """))
    common = ["--suite", str(suite), "--cache-dir", str(tmp_path / "cache"), "--results-dir", str(tmp_path / "res"),
              "--no-progress"]
    assert cli.main(["train", "--save-weights", str(tmp_path / "w"), *common]) == 0
    capsys.readouterr()
    assert cli.main(["run", "--format", "json", *common]) == 0
    records = records_of(capsys.readouterr().out)
    files = sorted(str(p) for p in (tmp_path / "res").rglob("*.json"))
    (weights,) = (tmp_path / "w").glob("*.pt")
    assert weights.name == "tiny-lenet-clip-seed0.pt"
    assert records[0]["weights_sha256"] == tensor_digest(torch.load(weights, weights_only=True))
    path = submit(files, out_dir=tmp_path / "entries", suite_file=suite, checkpoints=[weights],
                  weights_digest=checkpoint_weights_digest)
    entry = load_entry(path, bitbench.load_suite(suite))
    assert entry["checkpoints"] == [{"path": "../../w/tiny-lenet-clip-seed0.pt", "sha256": sha256_file(weights),
                                     "train_seed": 0}]
    assert entry["model_source"] == "trained"

    assert cli.main(["run", "--entry", str(path), "--format", "json", *common]) == 0
    out = capsys.readouterr()
    again = records_of(out.out)
    assert "entry lenet-clip: 2/2 results reproduced exactly" in out.err
    for old, new in zip(records, again):
        assert new["patterns"]["rerr"] == old["patterns"]["rerr"] and new["clean"]["err"] == old["clean"]["err"]
        assert new["model_source"] == "trained" and new["checkpoint_sha256"] == entry["checkpoints"][0]["sha256"]
        assert new["weights_sha256"] == old["weights_sha256"] and new["defense"] == "clip"
        assert new["timings"]["trained_now"] is False

    other = tmp_path / "other.pt"
    sd = torch.load(weights, weights_only=True)
    sd["features.0.bias"][0] += 1e-3
    torch.save(sd, other)
    assert cli.main(["run", "--entry", str(path), "--checkpoint", str(other), *common]) == 2
    assert "differs from the entry's" in capsys.readouterr().err
    # an entry whose numbers the checkpoint does not reproduce: exit 3, the verdict on stdout
    edited = json.loads(path.read_text())
    from bitbench.configs.entry import result_summary

    r0 = edited["results"][0]
    r0["per_model"]["rerr"][0][0] = min(1.0, r0["per_model"]["rerr"][0][0] + 0.01)
    r0["summary"]["rerr"] = result_summary(r0["per_model"]["rerr"], f"tiny|lenet-clip|{r0['attack']}|rerr")
    path.write_text(json.dumps(edited))
    assert cli.main(["run", "--entry", str(path), *common]) == 3
    out = capsys.readouterr().out
    assert "entry lenet-clip: 1/2 results reproduced exactly; differ: random_p0.01:patterns=3 model 0 (rerr)" in out
    assert cli.main(["run", "--entry", str(path), "--defense", "rquant", *common]) == 2
    assert "cannot be combined with --defense" in capsys.readouterr().err
    bare = json.loads(path.read_text())
    bare["checkpoints"] = []
    path.write_text(json.dumps(bare))
    assert cli.main(["run", "--entry", str(path), *common]) == 2
    assert "names no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("change,expect", [
    ({"checkpoints": [{"path": "w.pt", "train_seed": 0}]}, r"checkpoints\[0\]: expected \{path, sha256, train_seed\}"),
    ({"checkpoints": [{"path": "w.pt", "sha256": "ABC", "train_seed": 0}]},
     r"checkpoints\[0\]\.sha256: expected 64 lowercase hex digits"),
    ({"checkpoints": [{"path": "", "sha256": "0" * 64, "train_seed": 0}]}, r"checkpoints\[0\]\.path: expected a "
                                                                         "relative path"),
    ({"checkpoints": [{"path": "/etc/w.pt", "sha256": "0" * 64, "train_seed": 0}]},
     r"checkpoints\[0\]\.path: expected a path relative to the entry's folder"),
    ({"checkpoints": [{"path": "w.pt", "sha256": "0" * 64, "train_seed": 5}]},
     r"checkpoints\[0\]\.train_seed: 5 is not one of the entry's train_seeds \[0\]"),
    ({"checkpoints": "w.pt"}, "checkpoints: expected a list of objects"),
    ({"model_source": "cloud"}, 'model_source: expected one of "trained", "user"'),
])
def test_entry_checkpoint_and_model_source_fields(tmp_path, change, expect):
    from bitbench.configs.entry import EntryError, validate_entry

    from test_leaderboard import make_entry  # noqa: E402  (the hand-made entries of the leaderboard tests)

    (tmp_path / "toy.toml").write_text('name = "toy"\ndataset = "mnist5k"\nmodel = "lenet"\nrates = [0.001, 0.01, '
                                       '0.1]\npatterns = 3\neval_split = "test[0:1000]"\n')
    suite = bitbench.load_suite(str(tmp_path / "toy.toml"))
    entry = make_entry()
    validate_entry(dict(entry, checkpoints=[{"path": "w/lenet.pt", "sha256": "0" * 64, "train_seed": 0}],
                        model_source="user"), suite)
    with pytest.raises(EntryError, match=expect):
        validate_entry(dict(entry, **change), suite)


def test_submit_refuses_a_checkpoint_other_than_the_records(user, tmp_path, monkeypatch):
    """Records measured on one checkpoint file cannot be submitted with another file as their checkpoint."""
    from bitbench.configs.entry import EntryError
    from bitbench.leaderboard.entries import checkpoint_fields, load_record

    monkeypatch.chdir(user["root"])
    assert cli.main(["run", "--model", "usernet:build", "--checkpoint", str(user["ckpt"]), "--defense", "rquant",
                     "--attack", "random_p0.01", "--patterns", "1", "--n-eval", "20", "--no-progress",
                     "--cache-dir", str(tmp_path), "--results-dir", str(tmp_path / "r")]) == 0
    (path,) = (tmp_path / "r").rglob("*.json")
    rec = load_record(path)
    assert rec.model_source == "user" and rec.checkpoint_sha256 == sha256_file(user["ckpt"])
    # one results folder per set of weights: a readable name, the spec's digest, the weights' digest
    assert re.search(rf"/usernet__build-[0-9a-f]{{10}}-user-{rec.weights_sha256[:12]}/", str(path)), path
    assert checkpoint_fields([user["ckpt"]], tmp_path, [rec])[0]["sha256"] == rec.checkpoint_sha256
    other = tmp_path / "other.pt"
    other.write_bytes(user["ckpt"].read_bytes() + b"\0")
    with pytest.raises(EntryError, match="are not the weights the records were measured on: it holds none of"):
        checkpoint_fields([other], tmp_path, [rec])


def test_model_option_trains_another_architecture(tmp_path, capsys):
    """`--model` without a checkpoint trains that architecture with the defense's recipe (here a small ViT with
    weight clipping); its options replace the suite's model options."""
    args = ["run", "--model", "vit:depth=1,dim=32", "--defense", "clip", "--attack", "random_p0.01", "--epochs", "1",
            "--seeds", "1", "--patterns", "2", "--n-eval", "100", "--format", "json", "--no-progress", "--cache-dir",
            str(tmp_path / "c"), "--results-dir", str(tmp_path / "r")]
    assert cli.main(args) == 0
    (rec,) = records_of(capsys.readouterr().out)
    assert rec["model"] == "vit" and rec["model_options"] == {"depth": 1, "dim": 32}
    assert rec["model_source"] == "trained" and rec["checkpoint"] is None and rec["train_seed"] == 0
    assert rec["n_params"] == 49 * 32 + 32 + 16 * 32 + (2 * 64 + 32 * 96 + 96 + 32 * 32 + 32 + 32 * 64 + 64
                                                        + 64 * 32 + 32) + 64 + 330
    assert rec["clean"]["err"] < 0.85 and rec["timings"]["trained_now"] is True


def test_records_of_other_weights_are_not_reused(tmp_path):
    """The configuration hash holds the weights' digest: a checkpoint that changed under the same configuration
    (retrained on another thread count, replaced) gets its records recomputed, not the old ones."""
    from bitbench.defenses.io import save_checkpoint
    from bitbench.harness import Harness, RunOptions

    suite = bitbench.load_suite("default").replace(n_eval=100, patterns=2, train={"epochs": 1})
    opt = RunOptions(cache_dir=str(tmp_path / "c"), results_dir=str(tmp_path / "r"), progress=False)
    rec = Harness(suite, opt).run_cell("rquant", "random_p0.01")
    again = Harness(suite, opt).run_cell("rquant", "random_p0.01")
    assert again.cached and again.config_hash == rec.config_hash and again.weights_sha256 == rec.weights_sha256
    (ck,) = (tmp_path / "c").rglob("*.pt")
    d = torch.load(ck, weights_only=True)
    d["model"]["classifier.5.bias"] += 0.01
    save_checkpoint(d, ck)  # a consistent file (valid digest) with other weights: not a damaged one
    other = Harness(suite, opt).run_cell("rquant", "random_p0.01")
    assert not other.cached and other.weights_sha256 != rec.weights_sha256
    assert other.config_hash != rec.config_hash
