"""The energy axis through the real command line (subprocesses, embedded data, tiny runs): ``--attack
tolerable:...`` searches over cached random_p cells and its p* is the first crossing of the matrices it printed
(recomputed here by a straightforward loop); ``--voltage-profile`` on a profile of a known synthetic law gives the
V_min and saving computed by hand; a folder of uniform error maps evaluates each voltage on the profiled cells
(bit for bit the random_p pattern of the same rate); the analysis file enters an entry and LEADERBOARD.md; bad
options exit 2 with a clear message."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest

from test_cli import ROOT, bench

TINY = ["--epochs", "1", "--seeds", "2", "--patterns", "3", "--n-eval", "200"]
SPEC = "tolerable:budget=0.05,p_lo=0.001,p_hi=0.2,rtol=0.5,ci_rtol=0"
# a known synthetic law: log10 ber = -1 - 10 (V - 0.5), measured at 0.5 .. 0.9 V, nominal 1.0 V (ber 1e-6 at 1.0 V)
LAW = "# nominal_voltage_v = 1.0\nvoltage_v,ber\n" + "".join(f"{v:.2f},{10 ** (-1 - 10 * (v - 0.5)):.12g}\n"
                                                             for v in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0))


def first_crossing(rates, means, thr):
    """The reference: p* where mean RErr first exceeds thr, linear in log p between the neighbours."""
    for k, (p, m) in enumerate(zip(rates, means)):
        if m > thr + 1e-12:
            if k == 0:
                return ("<", rates[0])
            p0, m0 = rates[k - 1], means[k - 1]
            t = (thr - m0) / (m - m0)
            return ("=", math.exp(math.log(p0) + t * (math.log(p) - math.log(p0))))
    return (">", rates[-1])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("energy")
    (d / "law.csv").write_text(LAW)
    p = bench(["run", "--defense", "rquant", "--attack", SPEC, *TINY, "--voltage-profile", "law.csv",
               "--format", "json", "--no-progress"], d, check=0)
    return d, json.loads(p.stdout)


def test_search_is_the_first_crossing_of_cached_random_cells(run_dir):
    d, out = run_dir
    (a,) = out["tolerable"]
    assert a["format"] == "bitbench.tolerable/1" and a["defense"] == "rquant" and a["train_seeds"] == [0, 1]
    assert a["reference"] == "own" and a["budget"] == 0.05 and a["evaluations"] == len(a["rates"]) >= 2
    clean = a["reference_per_model"]
    assert a["reference_err"] == pytest.approx(sum(clean) / 2) and a["threshold"] == pytest.approx(
        a["reference_err"] + 0.05)
    means = [sum(sum(row) / len(row) for row in m) / len(m) for m in a["per_model_rerr"]]
    rel, value = first_crossing(a["rates"], means, a["threshold"])
    assert a["p_star"]["rel"] == rel and a["p_star"]["value"] == pytest.approx(value, rel=1e-9)
    # every evaluated rate is an ordinary random_p record on disk, with the matrix the analysis holds
    recs = {(r["attack"], r["train_seed"]): r for r in map(lambda f: json.loads(f.read_text()),
                                                              (d / "results").rglob("seed*.json"))}
    assert len(recs) == 2 * len(a["rates"])
    for p, mat in zip(a["rates"], a["per_model_rerr"]):
        for seed, row in zip((0, 1), mat):
            rec = recs[(f"random_p{p!r}:patterns=3", seed)]
            assert rec["patterns"]["rerr"] == row and rec["patterns"]["seed"] == [100, 101, 102]
    files = list((d / "results").rglob("tolerable.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == a


def test_voltage_and_saving_from_a_known_law_by_hand(run_dir):
    _, out = run_dir
    (a,), (v,) = out["tolerable"], out["voltage"]
    p = a["p_star"]
    assert p["rel"] == "=", "the tiny rquant run must cross inside [0.1%, 20%]"
    # log10 p = -1 - 10 (V - 0.5)  ->  V = 0.5 - (log10 p + 1) / 10, inside the measured range for p in [1e-5, 0.1]
    want_v = 0.5 - (math.log10(p["value"]) + 1) / 10
    if p["value"] > 0.1:
        assert v["v_min"] == {"value": 0.5, "rel": "<="}
    else:
        assert v["v_min"]["rel"] == "=" and v["v_min"]["value"] == pytest.approx(want_v, abs=1e-9)
        assert v["saving"]["value"] == pytest.approx(1 - want_v ** 2, abs=1e-9)      # assumed V^2, nominal 1.0 V
    assert "V^2" in v["energy_model"] and v["nominal_voltage"] == 1.0
    (row,) = out["precision"]
    assert row["bits"] == 8 and row["saving"] == v["saving"]


def test_second_run_costs_nothing_and_prints_the_tables(run_dir):
    d, out = run_dir
    p = bench(["run", "--defense", "rquant", "--attack", SPEC, *TINY, "--voltage-profile", "law.csv",
               "--no-progress"], d, check=0)
    n = out["tolerable"][0]["evaluations"]
    assert f"{n} (0 new)" in p.stdout
    assert "tolerates p ≤" in p.stdout or "every evaluated rate" in p.stdout
    assert "V_min [95% CI]" in p.stdout and "energy saved" in p.stdout and "weight-memory energy" in p.stdout
    assert "assumed: dynamic energy per access proportional to V^2" in p.stdout


def test_analysis_enters_the_entry_and_the_leaderboard(run_dir):
    d, out = run_dir
    a = out["tolerable"][0]
    suite = d / "suite"
    suite.mkdir(exist_ok=True)
    text = open(os.path.join(ROOT, "configs", "default.toml")).read()
    text = re.sub(r"(?m)^rates\s*=.*$", f"rates = [{a['rates'][0]!r}]", text)
    text = re.sub(r"(?m)^headline_rate\s*=.*$", f"headline_rate = {a['rates'][0]!r}", text)
    text = re.sub(r"(?m)^patterns\s*=.*$", "patterns = 3", text)
    text = re.sub(r"(?m)^(eval_split|n_eval)\s*=.*\n", "", text)  # the runs evaluated the first 200 images
    text = re.sub(r"(?m)^(name\s*=.*)$", r"\1\nn_eval = 200", text, count=1)
    (suite / "default.toml").write_text(text)
    recs = sorted(str(f) for f in (d / "results").rglob("seed*.json")
                  if json.loads(f.read_text())["attack"] == f"random_p{a['rates'][0]!r}:patterns=3")
    tol = [str(p) for p in (d / "results").rglob("tolerable.json")]
    bench(["submit", *recs, *tol, "--entries", "entries", "--suite-file", str(suite / "default.toml"),
           "--name", "tiny"], d, check=0)
    entry = json.loads((d / "entries" / "default" / "tiny.json").read_text())
    (stored,) = [json.loads(open(t).read()) for t in tol]  # as written by the latest run of the analysis
    assert entry["tolerable"] == [stored]
    volatile = {"date", "git_rev", "timings", "seconds", "new_evaluations"}
    assert {k: v for k, v in stored.items() if k not in volatile} == {k: v for k, v in a.items() if k not in volatile}
    p = bench(["leaderboard", "--entries", "entries", "--configs", str(suite), "--out", "-"], d, check=0)
    assert "Tolerable p +5 points" in p.stdout
    # an edited p* is refused on read
    entry["tolerable"][0]["p_star"]["value"] = (a["p_star"]["value"] or 0.01) * 1.5
    (d / "entries" / "default" / "tiny.json").write_text(json.dumps(entry))
    p = bench(["leaderboard", "--entries", "entries", "--configs", str(suite), "--out", "-"], d, check=2)
    assert "p_star" in p.stderr and "edited or damaged" in p.stderr


def test_profiled_error_maps_are_evaluated_on_their_cells(tmp_path):
    from bitbench.configs.voltage import save_profiled_map

    maps = tmp_path / "maps"
    maps.mkdir()
    law = {0.6: 0.05, 0.7: 0.01, 0.8: 0.002}
    for v, r in law.items():
        save_profiled_map(maps / f"chip_{v:.1f}V.npz", voltage_v=v, nominal_voltage_v=1.0,
                          p=np.full((4, 16, 8), r))
    p = bench(["run", "--defense", "rquant", "--attack", "tolerable:budget=0.05,rtol=0.5,ci_rtol=0,p_lo=0.001",
               "--attack", "random_p0.01",
               "--epochs", "1", "--seeds", "1", "--patterns", "2", "--n-eval", "200", "--voltage-profile", "maps",
               "--format", "json", "--no-progress"], tmp_path, check=0)
    out = json.loads(p.stdout)
    (prof,) = out["profiled"]
    assert prof["voltages"] == [0.6, 0.7, 0.8]
    # a uniform map of probability r gives bit for bit the pattern of random_p{r} with the same seeds
    res = tmp_path / "results" / "default" / "lenet" / "rquant"
    for v, r in law.items():
        recs = [json.loads(f.read_text()) for f in res.rglob("seed0.json")]
        em = [x for x in recs if x["attack_name"] == "errmap" and f"{v:.1f}V" in x["attack"]]
        assert len(em) == 1 and em[0]["patterns"]["seed"] == [100, 101]
        rnd = [x for x in recs if x["attack"] == f"random_p{r!r}:patterns=2"]
        assert rnd or r != 0.01
        if rnd:
            assert em[0]["patterns"]["rerr"] == rnd[0]["patterns"]["rerr"]
    assert prof["v_min"]["rel"] in ("=", "<=", ">")


@pytest.mark.parametrize("args, message", [
    (["--attack", "tolerable:budget=2"], "budget must be a fraction"),
    (["--attack", "tolerable:reference=mine"], "reference must be 'own'"),
    (["--attack", "tolerable:p_lo=0.3,p_hi=0.2"], "p_lo (0.3) must be below p_hi"),
    (["--attack", "tolerable:rtol=0"], "rtol must be a positive number"),
    (["--attack", "random_p0.01", "--voltage-profile", "example_sram"], "add --attack tolerable:budget=0.01"),
    (["--attack", "tolerable", "--voltage-profile", "nothing_here.csv"], "no such file or folder"),
    (["--attack", "tolerable", "--voltage-profile", "bad.csv"], "rises with voltage"),
    (["--attack", "tolerable", "--nominal-voltage", "1.0"], "--nominal-voltage applies to a --voltage-profile"),
])
def test_bad_options_exit_2_with_a_clear_message(tmp_path, args, message):
    (tmp_path / "bad.csv").write_text("# nominal_voltage_v = 1.0\nvoltage_v,ber\n0.5,0.001\n0.6,0.01\n")
    p = bench(["run", "--defense", "rquant", *args, "--epochs", "0", "--no-progress"], tmp_path, check=2)
    assert message in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "cache" / "checkpoints").exists(), "refused before any training"


def test_list_attacks_mentions_the_analysis(tmp_path):
    p = bench(["list", "attacks", "tolerable"], tmp_path, check=0)
    assert "tolerable" in p.stdout and "budget=0.01" in p.stdout and "reference='own'" in p.stdout
