"""Metrics as plug-ins: the contract of every registered metric, and a metric defined in a user's own module that
reaches the run table, the JSON, a submitted entry and LEADERBOARD.md without an edit of the project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import bitbench
from bitbench.configs.metrics import MetricOutputs, declaration_of, field_from_declaration
from bitbench.configs.registries import METRICS
from bitbench.configs.schema import KINDS

ROOT = str(Path(__file__).resolve().parents[1])


def _outputs(n=40, k=10, seed=0, clean=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    pred = logits.argmax(1)
    clean_pred = pred if clean else torch.randint(0, k, (n,), generator=g)
    return MetricOutputs(logits, pred, y, clean_pred, clean)


@pytest.mark.parametrize("name", METRICS.names())
def test_every_registered_metric_keeps_the_contract(name):
    m = METRICS.create(name)
    decl = declaration_of(m)
    f = field_from_declaration(m.name, decl)          # a valid declaration: records and entries can carry it
    assert f.level == "pattern" and f.title and f.doc and m.needs in ("predictions", "logits")
    assert m.reduce in ("mean", "sum")
    for clean in (False, True):
        out = _outputs(clean=clean)
        if m.needs != "logits":
            out.logits = None                         # a metric that asks for predictions gets no logits
        v = m.per_example(out)
        assert isinstance(v, torch.Tensor) and v.shape == (40,) and torch.isfinite(v).all()
        value = float(v.double().sum()) if m.reduce == "sum" else m.finish(float(v.double().mean()))
        assert KINDS[decl["kind"]].check(int(value) if decl["kind"] == "count" else value), (name, value)


def test_builtin_names_are_reserved():
    from bitbench.harness import create_metrics

    from bitbench.configs.errors import UsageError

    for name in ("err", "rerr", "nonfinite"):
        with pytest.raises(UsageError, match=f"metric '{name}' is measured on every pattern already"):
            create_metrics([name])
    with pytest.raises(UsageError, match="asked for twice"):
        create_metrics(["changed", "changed"])
    with pytest.raises(bitbench.SpecError, match="unknown metric 'nosuch'"):
        create_metrics(["nosuch"])


def test_topk_and_changed_against_a_straightforward_count():
    out = _outputs(n=200, k=10, seed=3)
    top = bitbench.create_metric("topk_err:k=3")
    want = sum(1 for lg, y in zip(out.logits.tolist(), out.y.tolist())
               if y not in sorted(range(10), key=lambda c: -lg[c])[:3]) / 200
    assert top.name == "top3_err" and float(top.per_example(out).double().mean()) == pytest.approx(want, abs=1e-12)
    ch = bitbench.create_metric("changed")
    assert float(ch.per_example(out).double().mean()) == sum(int(a != b) for a, b in zip(out.pred.tolist(),
                                                                                out.clean_pred.tolist())) / 200
    ppl = bitbench.create_metric("perplexity")
    nll = -torch.log_softmax(out.logits.double(), 1)[torch.arange(200), out.y].mean().item()
    assert ppl.finish(float(ppl.per_example(out).double().mean())) == pytest.approx(torch.tensor(nll).exp().item(),
                                                                                     rel=1e-6)


USER_METRIC = '''
import bitbench


@bitbench.register_metric("top5_err")
class Top5Err(bitbench.Metric):
    """Top-5 error: the label is not among the five largest logits."""

    needs = "logits"
    title = "Top-5 Err %"

    def per_example(self, out):
        top = out.logits.topk(min(5, out.logits.shape[1]), dim=1).indices
        return (top != out.y[:, None]).all(1).float()
'''

SUITE = """\
name = "tiny"
dataset = "mnist5k"
model = "lenet"
n_eval = 200
defenses = ["rquant"]
rates = [0.05]
patterns = 3
[model_options]
norm = "none"
[train]
epochs = 1
"""


def test_a_users_metric_reaches_table_json_entry_and_leaderboard(tmp_path):
    # the user's own package, installed with an entry point (as `pip install` would leave it)
    site = tmp_path / "site"
    (site / "mymetrics").mkdir(parents=True)
    (site / "mymetrics" / "__init__.py").write_text(USER_METRIC)
    dist = site / "mymetrics-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mymetrics\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bitbench.metrics]\ntop5_err = mymetrics\n")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "tiny.toml").write_text(SUITE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), ROOT]), BITBENCH_CACHE=str(tmp_path / "cache"),
               OMP_NUM_THREADS="1")

    def bench(*args):
        p = subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        return p.stdout

    run = ["run", "--suite", str(configs / "tiny.toml"), "--metric", "top5_err", "--no-progress",
           "--results-dir", str(tmp_path / "res")]
    table = bench(*run)
    head = table.splitlines()[0]
    assert "Clean Top-5 Err %" in head and "Top-5 Err %" in head.replace("Clean Top-5 Err %", "")
    (cell,) = json.loads(bench(*run, "--format", "json"))
    assert cell["metrics"]["top5_err"]["ci95"][0] <= cell["metrics"]["top5_err"]["mean"]
    (rec,) = cell["records"]
    assert rec["metrics"]["top5_err"]["title"] == "Top-5 Err %" and len(rec["patterns"]["top5_err"]) == 3
    # top-5 error never exceeds top-1 error, on the clean memory and on every chip
    assert rec["clean"]["top5_err"] <= rec["clean"]["err"]
    assert all(t <= e for t, e in zip(rec["patterns"]["top5_err"], rec["patterns"]["err"]))
    files = [str(p) for p in (tmp_path / "res").rglob("*.json")]
    bench("submit", *files, "--entries", str(tmp_path / "entries"), "--suite-file", str(configs / "tiny.toml"),
          "--name", "with-top5")
    entry = json.loads((tmp_path / "entries" / "tiny" / "with-top5.json").read_text())
    (res,) = entry["results"]
    assert entry["metrics"]["top5_err"]["doc"].startswith("Top-5 error")
    assert res["per_model"]["top5_err"] == [rec["patterns"]["top5_err"]]
    assert res["summary"]["top5_err"]["mean"] == pytest.approx(sum(rec["patterns"]["top5_err"]) / 3, abs=1e-12)
    # the leaderboard shows the column from the entry's own declaration: the plug-in is not even importable there
    env.pop("PYTHONPATH")
    env["PYTHONPATH"] = ROOT
    bench("leaderboard", "--entries", str(tmp_path / "entries"), "--configs", str(configs), "--out",
          str(tmp_path / "LB.md"))
    md = (tmp_path / "LB.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("|") and "Rank" in ln)
    assert "Top-5 Err % 5%" in header
    row = next(ln for ln in md.splitlines() if "with-top5" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cells[cols.index("Top-5 Err % 5%")].startswith(f"{100 * res['summary']['top5_err']['mean']:.2f}")


def test_a_metric_through_the_python_api_equals_an_independent_count(ds):
    """The same user metric registered in this test module, measured by `bitbench.evaluate_model`: its clean value
    equals a straightforward count on the quantized model's logits."""
    name = "test_top2_err"
    if name not in METRICS.names():
        @bitbench.register_metric(name)
        class Top2(bitbench.Metric):
            """Top-2 error."""
            needs = "logits"

            def per_example(self, out):
                return (out.logits.topk(2, dim=1).indices != out.y[:, None]).all(1).float()

    torch.manual_seed(0)
    model = bitbench.build_model("lenet", num_classes=10, in_channels=1, image_size=28, seed=0)
    x, y = ds.test_x[:300], ds.test_y[:300]
    rec = bitbench.evaluate_model(model, (x, y), format="rquant", attack="random_p0.01", patterns=2,
                                  metrics=[name], device="cpu")
    qm = bitbench.create_defense("rquant").quantize(model)
    q = bitbench.build_model("lenet", num_classes=10, in_channels=1, image_size=28, seed=0)
    qm.load_into(q)
    with torch.no_grad():
        logits = q.eval()(x)
    want = sum(1 for lg, t in zip(logits.tolist(), y.tolist()) if t not in sorted(range(10), key=lambda c: -lg[c])[:2])
    assert rec.clean_value(name) == pytest.approx(want / 300, abs=1e-12)
    assert len(rec.per_pattern(name)) == 2 and rec.metrics[name]["title"] == name
