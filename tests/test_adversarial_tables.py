"""Adversarial results in tables, result records and the leaderboard (hand-made records and entries, no torch)."""

from __future__ import annotations

import copy
import json

import pytest

from bitbench.configs.entry import EntryError, validate_entry
from bitbench.configs.record import PatternResult, ResultRecord
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


def _record(defense, attack, attack_name, *, rate=None, flips=None, patterns, clean=0.05, target=None, seed0=0,
            train_seed=0) -> ResultRecord:
    return ResultRecord(
        suite="adv", dataset="mnist5k", eval_split="test[0:1000]", n_eval=1000, model="lenet", model_options={},
        n_params=61706, defense=defense, defense_name=defense, defense_params={}, bits=8, attack=attack,
        attack_name=attack_name, attack_params={}, attack_kind="adversarial" if rate is None else "random",
        rate=rate, flips=flips, clean_err=clean, patterns=patterns, train_seed=train_seed, version="0.3.0",
        config_hash=f"h-{defense}-{attack}-{train_seed}", device="cpu", timings={"total": 1.0},
        date="2024-05-01T10:00:00+00:00", target=target, weights_sha256=f"{train_seed:064x}")


def curve_record(defense="rquant", attack="bfa_n10", errs=((0.1, 0.5, 0.9), (0.2, 0.6, 0.85)), ftt=(8, None),
                 used=(9, 10), sweep=(1, 5, 10), target=0.89, clean=0.05, stops=("collapse", "budget"), extra=None,
                 train_seed=0) -> dict:
    """A BFA-like record file: per trial, curve points at `sweep` with errors `errs` (flips_used = min(n, used));
    ``extra``: more point fields (e.g. asr) set on every point."""
    pats = []
    for k, (e, u, f, st) in enumerate(zip(errs, used, ftt, stops)):
        curve = [{"flips": n, "flips_used": min(n, u), "err": v, "rerr": min(1.0, v + 0.01), "loss": 1.0 + i,
                  "acc": 1 - v, **(extra or {})} for i, (n, v) in enumerate(zip(sweep, e))]
        pats.append(PatternResult(index=k, seed=k, err=curve[-1]["err"], rerr=curve[-1]["rerr"], flips_used=u, masked=1000,
                                  stop_reason=st, curve=curve, flips_to_target=f))
    tgt = None if target is None else {"metric": "err", "value": target}
    if extra and "asr" in extra:
        tgt = {"metric": "asr", "value": 0.9}
    return _record(defense, attack, "bfa", flips=sweep[-1], patterns=pats, clean=clean, target=tgt,
                   train_seed=train_seed).to_json()


def budget_record(defense="rquant", rerr=(0.3, 0.5)):
    return curve_record(defense, "budget_e5", errs=((rerr[0] - 0.01,), (rerr[1] - 0.01,)), ftt=(None, None),
                        used=(5, 5), sweep=(5,), target=None, stops=("budget", "budget"))


def rate_record(defense="rquant", clean=0.05):
    pats = [PatternResult(index=k, seed=100 + k, err=v, rerr=v, masked=990, sdc=10) for k, v in enumerate((0.07, 0.09))]
    return _record(defense, "random_p0.01", "random", rate=0.01, patterns=pats, clean=clean).to_json()


def test_run_tables_give_adversarial_results_their_own_shape():
    recs = [ResultRecord.from_json(r) for r in (rate_record(), curve_record(), budget_record())]
    tables = run_tables(recs, "sd")
    assert len(tables) == 2
    plain, adv = tables
    assert list(plain.columns)[:5] == ["defense", "bits", "attack", "models", "patterns"] and len(plain) == 1
    assert list(adv.columns)[:6] == ["defense", "bits", "attack", "models", "trials", "Clean Err %"]
    assert [c for c in adv.columns if c.startswith("Err % n=")] == ["Err % n=1", "Err % n=5", "Err % n=10"]
    bfa = adv.iloc[0]
    # mean ± sd over trials (ddof 1 of the one model's two trials: 0.1 and 0.2 -> sd 0.0707)
    assert bfa["Err % n=1"] == "15.00 ± 7.07" and bfa["Err % n=10"] == "87.50 ± 3.54"
    # trial 2 did not reach the target within its 10 flips: censored, shown as > 10
    assert bfa["flips to target"] == "> 9 [8, > 10] (1/2)" and bfa["target"] == "Err >= 89.00%"
    assert bfa["stop"] == "collapse 1, budget 1" and bfa["flips used"] == "9.5"
    bud = adv.iloc[1]
    assert bud["Err % n=5"] == "39.00 ± 14.14" and bud["Err % n=1"] == "–" and bud["flips to target"] == "–"
    text = render(tables, "table")
    assert "Err % n=10" in text and "RErr %" in text and "\n\n" in text
    ci = run_tables(recs)[1].iloc[0]["Err % n=1"]                # default: mean [95% CI]
    assert ci.startswith("15.00 [") and ci.endswith("]")


def test_suite_tables_put_adversarial_columns_in_a_second_table():
    recs = [ResultRecord.from_json(r) for r in (rate_record("normal"), curve_record("normal"),
                                                 budget_record("normal"), rate_record(), curve_record())]
    plain, order, adv = suite_tables(recs, "mean")
    assert list(plain.columns) == ["defense", "models", "Clean Err %", "p=1%"]
    assert list(adv.columns) == ["defense", "Err@1", "Err@5", "Err@10", "flips to target", "RErr budget_e5"]
    assert list(adv["defense"]) == ["normal", "rquant"] and adv.iloc[1]["RErr budget_e5"] == "–"
    assert adv.iloc[0]["Err@10"] == "87.50"
    # identical values: the two defenses are not separable at p = 1%
    assert order.iloc[0].tolist() == ["p=1%", "normal ≈ rquant"]


def test_targeted_records_get_an_asr_table_and_undefined_values_show_a_dash():
    one_to_one = curve_record(attack="tbfa_n10:target=3,source=5", ftt=(1, 1),
                              extra={"asr": 0.95, "asr_all": 0.2, "other_err": 0.1})
    all_to_one = curve_record(attack="tbfa_n10:target=3", ftt=(1, 1), extra={"asr": 0.95, "asr_all": 0.9})
    (t,) = adversarial_tables([ResultRecord.from_json(one_to_one), ResultRecord.from_json(all_to_one)], "sd")
    assert "ASR % n=1" in t.columns
    assert t.iloc[0]["Other Err %"] == "10.00 ± 0.00" and t.iloc[0]["ASR (all) %"] == "20.00 ± 0.00"
    # an all-to-one attack has no 'other' classes: the metric does not exist there
    assert t.iloc[1]["Other Err %"] == "–" and t.iloc[1]["ASR (all) %"] == "90.00 ± 0.00"


def test_no_censored_trial_outranks_a_reached_one():
    """Two trials of a cell; the one that never reached the target within 10 flips must not look more robust than one
    that reached it only at 9 (the old ranking counted "never" as more flips than any)."""
    from bitbench.configs.stats import rank_flips

    # an attacker-side stop after 3 flips censors those trials at 3: on the common horizon (3 flips) neither cell
    # reached the target, so the stopped one is not ranked as more robust
    ranks = {c["name"]: c["rank"] for c in rank_flips([
        {"name": "late", "flips_to_target": [9, 9], "budget": 10},
        {"name": "stopped", "flips_to_target": [None, None], "budget": [3, 3]}])}
    assert ranks == {"late": 1, "stopped": 1}
    # run to their budget, the censored trials rank above the reached ones, as robustness should
    ranks = {c["name"]: c["rank"] for c in rank_flips([
        {"name": "late", "flips_to_target": [9, 9], "budget": 10},
        {"name": "never", "flips_to_target": [None, None], "budget": 10}])}
    assert ranks == {"never": 1, "late": 2}


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
    assert res["curve"] == {"flips": [1, 5, 10], "err": [[[0.1, 0.2, 0.3], [0.1, 0.2, 0.4]]]}   # [model][trial][n]
    assert res["per_model"]["flips_to_target"] == [[None, None]] and res["target"] == {"metric": "err", "value": 0.89}
    suite = load_suite("adv", configs)
    validate_entry(e, suite)
    md = generate_markdown(tmp_path / "entries", configs_dir=configs)
    main, adv = md.split("### Adversarial bit flips")
    assert "bfa_n10" not in main.split("Protocol:")[1].split("Errors in %")[0]     # not repeated in the main table
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in adv.splitlines() if line.startswith("|")]
    header, rows = rows[0], rows[2:]
    assert header == ["Rank", "Entry", "Defense", "Models", "Clean Err %", "Err % 1 flips", "Err % 5 flips",
                      "Err % 10 flips", "Flips to chance", "RErr % `budget_e5`", "Rank `budget_e5`"]
    assert [(r[0], r[1]) for r in rows] == [("1", "c"), ("2", "a"), ("3", "b")]
    assert rows[0][8] == "> 9 (0/2)" and rows[1][8] == "> 9 [8, > 10] (1/2)" and rows[2][8] == "3.5 [3, 4] (2/2)"
    assert rows[0][9] == "–" and rows[0][10] == "–" and rows[1][10] == "1" and rows[2][10] == "2"
    assert rows[1][9].startswith("40.00 [")
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

    refused(lambda r: r.pop("target"), r"results\[\d\]\.per_model\.flips_to_target: values without a target")
    refused(lambda r: r["curve"]["err"].pop(), r"curve\.err: expected \[\[\[a fraction")
    refused(lambda r: r["curve"]["err"][0].append([0.5, 0.5, 0.5]), r"curve\.err")
    refused(lambda r: r["curve"]["err"][0][0].append(0.5), r"curve\.err")
    refused(lambda r: r["curve"].__setitem__("flips", [5, 1, 10]), r"curve\.flips")
    refused(lambda r: r["per_model"]["flips_to_target"][0].append(3), r"per_model\.flips_to_target\[0\]")
    refused(lambda r: r["curve"]["err"][0][1].__setitem__(0, 1.5), r"curve\.err")
    refused(lambda r: r["curve"].__setitem__("loss", [[[1, 1, 1]] * 2]), r"curve\.loss")
    refused(lambda r: r.__setitem__("rate", 0.01), r"curve: a random bit error rate has no flip curve")


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
    t = curve_record(attack="tbfa_n10:target=3", ftt=(1, 1), extra={"asr": 0.95, "asr_all": 0.9})
    _entry(tmp_path, configs, "a", "rquant", [rate_record(), curve_record(), t])
    md = generate_markdown(tmp_path / "entries", configs_dir=configs)
    adv = md.split("### Adversarial bit flips")[1]
    header = [c.strip() for c in adv.split("\n|")[1].strip("|").split("|")]
    assert header[-2:] == ["ASR % `tbfa_n10:target=3`", "Flips to target `tbfa_n10:target=3`"]
    row = [c.strip() for c in [ln for ln in adv.splitlines() if ln.startswith("| ")][1].strip("|").split("|")]
    assert row[-2:] == ["95.00", "1 [1, 1] (2/2)"]
