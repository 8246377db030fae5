"""Adversarial results in tables, result records and the leaderboard (hand-made records and entries, no torch)."""

from __future__ import annotations

import copy
import json

import pytest

from bitbench.configs.entry import EntryError, validate_entry
from bitbench.configs.record import ResultRecord, flips_summary, format_flips, record_digest
from bitbench.leaderboard import generate_markdown, load_suite, submit
from bitbench.leaderboard.generate import adversarial_ranked
from bitbench.tables import adversarial_tables, render, run_tables, suite_tables

SUITE = """\
name = "adv"
dataset = "mnist5k"
model = "lenet"
bits = 8
defenses = ["normal", "rquant"]
attacks = ["bfa_n10", "budget_e5"]
rates = [0.01]
patterns = 2
base_seed = 100
eval_split = "test[0:1000]"
"""


def _sealed(d: dict) -> dict:
    """A record file's JSON with its content digest (records are verified on every read)."""
    d["digest"] = record_digest(d)
    return d


def curve_record(defense="rquant", attack="bfa_n10", errs=((0.1, 0.5, 0.9), (0.2, 0.6, 0.85)), ftt=(8, None),
                 used=(9, 10), sweep=(1, 5, 10), target=0.89, clean=0.05, stops=("collapse", "budget")):
    """A BFA-like record file: per trial, curve points at `sweep` with errors `errs` (flips_used = min(n, used))."""
    curves = []
    for e, u in zip(errs, used):
        curves.append([{"flips": n, "flips_used": min(n, u), "err": v, "rerr": min(1.0, v + 0.01), "loss": 1.0 + i,
                        "acc": 1 - v} for i, (n, v) in enumerate(zip(sweep, e))])
    per_err = [c[-1]["err"] for c in curves]
    per_rerr = [c[-1]["rerr"] for c in curves]
    mean = sum(per_rerr) / len(per_rerr)
    std = (sum((v - mean) ** 2 for v in per_rerr) / len(per_rerr)) ** 0.5
    return _sealed({
        "format": "bitbench.result/2", "suite": "adv", "dataset": "mnist5k", "eval_split": "test[0:1000]",
        "n_eval": 1000, "model": "lenet", "model_options": {}, "n_params": 61706, "defense": defense,
        "defense_name": defense, "defense_params": {}, "bits": 8, "attack": attack, "attack_name": "bfa",
        "attack_params": {}, "attack_kind": "adversarial", "rate": None, "flips": sweep[-1], "clean_err": clean,
        "per_pattern_err": per_err, "per_pattern_rerr": per_rerr,
        "rerr": {"mean": mean, "std": std, "min": min(per_rerr), "max": max(per_rerr)}, "seeds": [0, 1],
        "n_patterns": len(curves), "train_seed": 0, "version": "0.1.0", "git_rev": None,
        "config_hash": f"h-{defense}-{attack}", "device": "cpu", "timings": {"total": 1.0},
        "date": "2024-05-01T10:00:00+00:00", "flips_used": list(used), "stop_reason": list(stops),
        "flips_to_target": list(ftt), "target": None if target is None else {"metric": "err", "value": target},
        "curve": curves,
    })


def budget_record(defense="rquant", rerr=(0.3, 0.5)):
    return curve_record(defense, "budget_e5", errs=((rerr[0] - 0.01,), (rerr[1] - 0.01,)), ftt=(None, None),
                        used=(5, 5), sweep=(5,), target=None, stops=("budget", "budget"))


def rate_record(defense="rquant", clean=0.05):
    per = [0.07, 0.09]
    return _sealed({
        "format": "bitbench.result/2", "suite": "adv", "dataset": "mnist5k", "eval_split": "test[0:1000]",
        "n_eval": 1000, "model": "lenet", "model_options": {}, "n_params": 61706, "defense": defense,
        "defense_name": defense, "defense_params": {}, "bits": 8, "attack": "random_p0.01", "attack_name": "random",
        "attack_params": {}, "rate": 0.01, "flips": None, "clean_err": clean, "per_pattern_err": per,
        "per_pattern_rerr": per, "rerr": {"mean": 0.08, "std": 0.01, "min": 0.07, "max": 0.09}, "seeds": [100, 101],
        "n_patterns": 2, "train_seed": 0, "version": "0.1.0", "git_rev": None, "config_hash": f"r-{defense}",
        "device": "cpu", "timings": {"total": 1.0}, "date": "2024-05-01T10:00:00+00:00",
    })


def test_flips_summary_counts_failures_as_more_than_any_count():
    assert flips_summary([8, 12, 10]) == {"median": 10, "min": 8, "max": 12, "reached": 3, "trials": 3}
    s = flips_summary([8, None, 10])
    assert s["median"] == 10 and s["reached"] == 2 and format_flips(s) == "10 [8, 10] (2/3)"
    assert format_flips(flips_summary([8, None, None])) == "– [8, 8] (1/3)"
    assert format_flips(flips_summary([None])) == "– (0/1)" and format_flips(flips_summary([7])) == "7"
    assert format_flips(flips_summary([4, 6])) == "5 [4, 6]"


def test_run_tables_give_adversarial_results_their_own_shape():
    recs = [ResultRecord.from_json(r) for r in (rate_record(), curve_record(), budget_record())]
    tables = run_tables(recs)
    assert len(tables) == 2
    plain, adv = tables
    assert list(plain.columns)[:4] == ["defense", "bits", "attack", "patterns"] and len(plain) == 1
    assert list(adv.columns)[:5] == ["defense", "bits", "attack", "trials", "clean Err %"]
    assert [c for c in adv.columns if c.startswith("Err % n=")] == ["Err % n=1", "Err % n=5", "Err % n=10"]
    bfa = adv.iloc[0]
    assert bfa["Err % n=1"] == "15.00 ± 5.00" and bfa["Err % n=10"] == "87.50 ± 2.50"
    assert bfa["flips to target"] == "– [8, 8] (1/2)" and bfa["target"] == "Err >= 89.00%"
    assert bfa["stop"] == "collapse 1, budget 1" and bfa["flips used"] == "9.5"
    bud = adv.iloc[1]
    assert bud["Err % n=5"] == "39.00 ± 10.00" and bud["Err % n=1"] == "–" and bud["flips to target"] == "–"
    text = render(tables, "table")
    assert "Err % n=10" in text and "RErr % mean ± std [min, max]" in text and "\n\n" in text


def test_suite_tables_put_adversarial_columns_in_a_second_table():
    recs = [ResultRecord.from_json(r) for r in (rate_record("normal"), curve_record("normal"),
                                                 budget_record("normal"), rate_record(), curve_record())]
    plain, adv = suite_tables(recs)
    assert list(plain.columns) == ["defense", "clean Err %", "p=1%"]
    assert list(adv.columns) == ["defense", "Err@1", "Err@5", "Err@10", "flips to target", "RErr budget_e5"]
    assert list(adv["defense"]) == ["normal", "rquant"] and adv.iloc[1]["RErr budget_e5"] == "–"
    assert adv.iloc[0]["Err@10"] == "87.50"


def test_targeted_records_get_an_asr_table():
    r = curve_record(attack="tbfa_n10:target=3")
    r["target"] = {"metric": "asr", "value": 0.9}
    for c in r["curve"]:
        for q in c:
            q["asr"], q["other_err"] = 0.95, 0.1
    r["flips_to_target"] = [1, 1]
    (t,) = adversarial_tables([ResultRecord.from_json(_sealed(r))])
    assert "ASR % n=1" in t.columns and t.iloc[0]["other Err %"] == "10.00 ± 0.00"


# -- leaderboard ----------------------------------------------------------------------------------------------------
@pytest.fixture
def configs(tmp_path):
    d = tmp_path / "configs"
    d.mkdir()
    (d / "adv.toml").write_text(SUITE)
    return d


def _entry(tmp_path, configs, name, defense, recs):
    paths = []
    for i, r in enumerate(recs):
        p = tmp_path / f"{name}-{i}.json"
        p.write_text(json.dumps(r))
        paths.append(p)
    return submit(paths, name=name, out_dir=tmp_path / "entries", configs_dir=configs)


def test_submit_carries_curves_and_the_markdown_ranks_by_flips_to_chance(tmp_path, configs):
    # a: reaches chance at 8 and never (median over 2 trials: a failure); b: at 3 and 4; c: never, but with a lower
    # error after the most flips than a
    _entry(tmp_path, configs, "a", "rquant", [rate_record(), curve_record(), budget_record(rerr=(0.3, 0.5))])
    _entry(tmp_path, configs, "b", "normal", [rate_record("normal"), curve_record("normal", ftt=(3, 4)),
                                              budget_record("normal", rerr=(0.9, 0.9))])
    path = _entry(tmp_path, configs, "c", "clip", [rate_record("clip"),
                                                   curve_record("clip", errs=((0.1, 0.2, 0.3), (0.1, 0.2, 0.4)),
                                                                ftt=(None, None))])
    e = json.loads(path.read_text())
    res = next(r for r in e["results"] if r["attack"] == "bfa_n10")
    assert res["curve"] == {"flips": [1, 5, 10], "err": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.4]]}
    assert res["flips_to_target"] == [None, None] and res["target"] == {"metric": "err", "value": 0.89}
    suite = load_suite("adv", configs)
    validate_entry(e, suite)
    md = generate_markdown(tmp_path / "entries", configs_dir=configs)
    main, adv = md.split("### Adversarial bit flips")
    assert "bfa_n10" not in main.split("Protocol:")[1].split("Errors in %")[0]     # not repeated in the main table
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in adv.splitlines() if line.startswith("|")]
    header, rows = rows[0], rows[2:]
    assert header == ["Rank", "Entry", "Defense", "Clean Err", "Err 1 flips", "Err 5 flips", "Err 10 flips",
                      "Flips to chance", "RErr budget_e5", "Rank budget_e5"]
    assert [(r[0], r[1]) for r in rows] == [("1", "c"), ("2", "a"), ("3", "b")]
    assert rows[0][7] == "– (0/2)" and rows[1][7] == "– [8, 8] (1/2)" and rows[2][7] == "3.5 [3, 4]"
    assert rows[0][8] == "–" and rows[0][9] == "–" and rows[1][9] == "1" and rows[2][9] == "2"
    assert rows[1][8] == "40.00 ± 10.00"
    entries = [json.loads(p.read_text()) for p in sorted((tmp_path / "entries" / "adv").glob("*.json"))]
    assert [e["name"] for _, _, e in adversarial_ranked(entries, suite)] == ["c", "a", "b"]


def test_broken_adversarial_results_are_refused(tmp_path, configs):
    path = _entry(tmp_path, configs, "a", "rquant", [rate_record(), curve_record()])
    e = json.loads(path.read_text())
    suite = load_suite("adv", configs)
    i = next(i for i, r in enumerate(e["results"]) if r["attack"] == "bfa_n10")

    def refused(mutate, field):
        bad = copy.deepcopy(e)
        mutate(bad["results"][i])
        with pytest.raises(EntryError, match=field):
            validate_entry(bad, suite)

    refused(lambda r: r.pop("target"), r"results\[\d\]\.target")
    refused(lambda r: r["curve"]["err"].pop(), r"curve\.err")
    refused(lambda r: r["curve"]["err"][0].append(0.5), r"curve\.err")
    refused(lambda r: r["curve"].__setitem__("flips", [5, 1, 10]), r"curve\.flips")
    refused(lambda r: r["flips_to_target"].append(3), "flips_to_target")
    refused(lambda r: r.__setitem__("target", None), r"flips_to_target\[0\]")
    refused(lambda r: r["curve"]["err"][1].__setitem__(0, 1.5), r"curve\.err\[1\]\[0\]")
    refused(lambda r: r["curve"].__setitem__("loss", [[1, 1]] * 3), r"curve\.loss")


def test_flips_plot(tmp_path, configs):
    pytest.importorskip("matplotlib")
    from bitbench.leaderboard.plot import write_plots

    _entry(tmp_path, configs, "a", "rquant", [rate_record(), curve_record()])
    out = write_plots(tmp_path / "entries", tmp_path / "plots", configs_dir=configs)
    assert sorted(out) == ["adv", "adv-flips"]
    png = out["adv-flips"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in png
    again = write_plots(tmp_path / "entries", tmp_path / "plots2", configs_dir=configs)
    assert again["adv-flips"].read_bytes() == png
    md = tmp_path / "LB.md"
    from bitbench.leaderboard import cli as lcli

    assert lcli.main(["leaderboard", "--entries", str(tmp_path / "entries"), "--configs", str(configs), "--out",
                      str(md), "--plots", str(tmp_path / "plots")]) == 0
    assert "![Test error against bit flips, suite adv](plots/adv-flips.png)" in md.read_text()


def test_targeted_results_get_their_own_columns_in_the_leaderboard(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "adv.toml").write_text(SUITE.replace('attacks = ["bfa_n10", "budget_e5"]',
                                                    'attacks = ["bfa_n10", "tbfa_n10:target=3"]'))
    t = curve_record(attack="tbfa_n10:target=3", ftt=(1, 1))
    t["target"] = {"metric": "asr", "value": 0.9}
    for c in t["curve"]:
        for q in c:
            q["asr"] = 0.95
    _entry(tmp_path, configs, "a", "rquant", [rate_record(), curve_record(), _sealed(t)])
    md = generate_markdown(tmp_path / "entries", configs_dir=configs)
    adv = md.split("### Adversarial bit flips")[1]
    header = [c.strip() for c in adv.split("\n|")[1].strip("|").split("|")]
    assert header[-2:] == ["ASR tbfa_n10:target=3", "Flips to target tbfa_n10:target=3"]
    row = [c.strip() for c in [ln for ln in adv.splitlines() if ln.startswith("| ")][1].strip("|").split("|")]
    assert row[-2:] == ["95.00 ± 0.00", "1 [1, 1]"]
