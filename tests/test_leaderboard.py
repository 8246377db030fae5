"""Leaderboard: entry validation, submit round trip, ranking, deterministic markdown, CLI (no torch needed)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitbench.leaderboard import (EntryError, SuiteError, generate_markdown, load_entries, load_entry, load_suite,
                         ranked_entries, submit, validate_entry, write_entry)
from bitbench.leaderboard import cli as lcli
from bitbench.leaderboard.entries import DEFAULT_ENTRIES_DIR, entry_files

REPO = Path(__file__).resolve().parent.parent
RATES = [0.001, 0.01, 0.1]

TOY_SUITE = """\
name = "toy"
description = "A hand-made suite for the leaderboard tests"
dataset = "mnist5k"
model = "lenet"
bits = 8
defenses = ["normal", "rquant"]
attacks = []
rates = [0.001, 0.01, 0.1]
headline_rate = 0.01
patterns = 3
base_seed = 100
eval_split = "test[0:1000]"
"""


@pytest.fixture
def configs(tmp_path) -> Path:
    d = tmp_path / "configs"
    d.mkdir()
    (d / "toy.toml").write_text(TOY_SUITE)
    (d / "pinned.toml").write_text(TOY_SUITE.replace('"toy"', '"pinned"').replace("test[0:1000]", "test[0:500]"))
    return d


@pytest.fixture
def suite(configs):
    return load_suite("toy", configs)


def _per_model(m: float, models: int, spread: float) -> list[list[float]]:
    """``models`` rows of 3 per-pattern values around ``m`` (row i shifted by spread * (i - centre))."""
    mid = (models - 1) / 2
    return [[min(1.0, max(0.0, m + spread * (i - mid)))] * 3 for i in range(models)]


def make_entry(name="e1", rerrs=(0.05, 0.1, 0.3), clean=0.02, suite="toy", defense="rquant", paper=False, models=1,
               spread=0.0):
    """A valid entry (format /2): benchmark rows carry every model's per-pattern values and their summaries."""
    from bitbench.configs.entry import result_summary

    results = []
    for rate, m in zip(RATES, rerrs):
        if m is None:
            continue
        r = {"attack": f"random_p{rate!r}", "rate": rate, "n_patterns": 3, "config_hash": f"h{rate}"}
        if paper:
            r.update(n_patterns=None, config_hash=None, summary={"rerr": {"mean": m}})
        else:
            pm = _per_model(m, models, spread)
            r["per_model"] = {"rerr": pm, "nonfinite": [[0, 0, 0]] * models}
            r["summary"] = {"rerr": result_summary(pm, f"{suite}|{name}|{r['attack']}|rerr")}
        results.append(r)
    return {
        "format": "bitbench.leaderboard_entry/2", "suite": suite, "name": name, "model": "lenet",
        "model_options": {"norm": "none"}, "n_params": None if paper else 61706, "model_source": "trained",
        "checkpoints": [], "defense": defense, "defense_name": defense.split(":")[0], "defense_params": {"bits": 8},
        "bits": 8, "memory_overhead": 0.0,
        "protocol": {"dataset": "mnist5k", "eval_split": "test[0:1000]", "bits": 8, "rates": list(RATES),
                     "patterns": 3, "base_seed": 100},
        "train_seeds": list(range(models)), "clean_err": clean,
        "per_model_clean_err": None if paper else [clean] * models, "metrics": {},
        "results": results, "version": None if paper else "0.3.0", "git_rev": None,
        "config_hash": None if paper else "abc123", "pattern_seeds": None if paper else [100, 101, 102],
        "device": "cpu", "date": "2024-05-01T12:00:00+00:00",
        "citation": "A. Author, Some paper, 2024" if paper else None,
        "link": "https://example.org/paper" if paper else None,
        "reported_by": "paper" if paper else "benchmark", "notes": [],
    }


def put(entries_dir: Path, entry: dict) -> Path:
    return write_entry(entry, entries_dir / entry["suite"] / f"{entry['name']}.json")


def make_record(rate, *, rerr=(0.1, 0.12, 0.14), clean=0.02, suite="toy", defense="rquant", dataset="mnist5k",
                eval_split="test[0:1000]", patterns=3, base_seed=100, attack=None, train_seed=0, **extra):
    """A result record in the format of docs/formats.md (as the harness writes it: summaries and digest derived)."""
    from bitbench.configs.record import PatternResult, ResultRecord

    rerr = list(rerr)[:patterns] + [rerr[-1]] * max(0, patterns - len(rerr))
    pats = [PatternResult(index=k, seed=base_seed + k, err=max(0.0, v - 0.01), rerr=v, masked=1000)
            for k, v in enumerate(rerr)]
    rec = ResultRecord(
        suite=suite, dataset=dataset, eval_split=eval_split, n_eval=1000, model="lenet",
        model_options={"norm": "none"}, n_params=61706, defense=defense, defense_name=defense.split(":")[0],
        defense_params={"bits": 8}, bits=8, attack=attack or f"random_p{rate!r}", attack_name="random",
        attack_params={"p": rate, "patterns": patterns, "base_seed": base_seed}, rate=rate, clean_err=clean,
        patterns=pats, train_seed=train_seed, version="0.3.0", config_hash=f"cfg-{defense}-{rate}-{train_seed}",
        device="cpu", timings={"train": 1.0, "attack_eval": 0.5, "total": 1.6},
        date=f"2024-05-0{1 + RATES.index(rate) if rate in RATES else 9}T10:00:00+00:00",
        weights_sha256=f"{train_seed:064x}")
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec.to_json()


def write_records(tmp_path: Path, records, sub="results") -> list[Path]:
    d = tmp_path / sub
    d.mkdir(exist_ok=True)
    paths = []
    for i, r in enumerate(records):
        p = d / f"{i}_{r['defense'].replace(':', '_')}_{r['attack']}_{r['train_seed']}.json"
        p.write_text(json.dumps(r, indent=2))
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------------------------------------------
# validation
def test_valid_entry_passes(suite):
    e = make_entry()
    assert validate_entry(e, suite) is e


def _set(path, value):
    """A mutation setting ``entry[path...] = value``."""
    def mutate(e):
        obj = e
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return mutate


BROKEN = [
    # (mutation, exact message)
    (lambda e: e.pop("clean_err"), "clean_err: missing"),
    (_set(("results", 2, "summary", "rerr", "mean"), "12%"),
     'results[2].summary.rerr.mean: "12%" does not match the per-model values (0.3): the entry was edited or damaged'),
    (_set(("clean_err",), 1.5), "clean_err: expected a number in [0, 1] or null, got 1.5"),
    (_set(("results", 0, "summary", "rerr", "model_sd"), 0.1),
     "results[0].summary.rerr.model_sd: 0.1 does not match the per-model values (null): the entry was edited or "
     "damaged"),
    (_set(("n_params",), True), "n_params: expected an integer >= 1 or null, got true"),
    (_set(("bits",), "8"), 'bits: expected an integer >= 1, got "8"'),
    (lambda e: e["results"][1].pop("summary"), "results[1].summary: missing"),
    (_set(("results", 1, "rate"), 0.001), "results[1].rate: duplicate rate 0.001 (also results[0])"),
    (_set(("results", 1, "attack"), "random_p0.001"),
     'results[1].attack: duplicate attack "random_p0.001" (also results[0])'),
    (lambda e: e["results"].pop(2),
     "results: missing rates of the suite: 0.1 (give one result per rate; only paper rows may give a subset)"),
    (_set(("results", 2, "rate"), 0.2), "results[2].rate: 0.2 is not one of the protocol's rates [0.001, 0.01, 0.1]"),
    (_set(("protocol", "patterns"), 10),
     'protocol.patterns: 10 differs from suite "toy" (3): results are not comparable'),
    (_set(("protocol", "dataset"), "cifar10"),
     'protocol.dataset: "cifar10" differs from suite "toy" ("mnist5k"): results are not comparable'),
    (lambda e: (e["protocol"].__setitem__("base_seed", 0), e.__setitem__("pattern_seeds", [0, 1, 2])),
     'protocol.base_seed: 0 differs from suite "toy" (100): results are not comparable'),
    (lambda e: (e["protocol"].__setitem__("rates", [0.001, 0.01]), e["results"].pop(2)),
     'protocol.rates: [0.001, 0.01] differs from suite "toy" ([0.001, 0.01, 0.1]): results are not comparable'),
    (lambda e: e["protocol"].pop("eval_split"),
     'protocol: expected {dataset, eval_split, bits, rates, patterns, base_seed}, got {"dataset": "mnist5k", '
     '"bits": 8, "rates": [0.001, 0.01, 0.1], "patterns": 3, "base_seed": 100}'),
    (_set(("bits",), 4), "bits: 4 differs from protocol.bits (8)"),
    (_set(("format",), "bitbench.result/3"),
     'format: expected "bitbench.leaderboard_entry/2", got "bitbench.result/3"'),
    (_set(("format",), "bitbench.leaderboard_entry/1"),
     'format: "bitbench.leaderboard_entry/1" is an entry of bitbench 0.1-0.2; this version reads '
     '"bitbench.leaderboard_entry/2" (submit the result records again: python -m benchmark submit <records>)'),
    (_set(("reported_by",), "me"), 'reported_by: expected one of "benchmark", "paper", got "me"'),
    (_set(("colour",), "red"), None),  # unknown field
    (_set(("results", 0, "per_model", "rerr"), [[0.0, 0.0, 0.0]]),
     "results[0].per_model.rerr[0][0]: 0.0 is below the model's clean error 0.02: RErr counts clean OR perturbed "
     "mistakes, so it is never lower"),
    (_set(("results", 0, "per_model", "rerr"), [[0.05]]),
     "results[0].per_model.rerr[0]: expected one value per pattern (n_patterns = 3)"),
    (_set(("results", 0, "per_model", "rerr"), [[0.05] * 3, [0.05] * 3]),
     "results[0].per_model.rerr: expected one list per model (1, the train_seeds)"),
    (_set(("results", 0, "per_model", "rerr"), [[0.05, float("nan"), 0.05]]),
     "results[0].per_model.rerr[0][1]: expected a number in [0, 1], got NaN"),
    (_set(("results", 0, "per_model", "rerr"), [[0.05, 1.5, 0.05]]),
     "results[0].per_model.rerr[0][1]: expected a number in [0, 1], got 1.5"),
    (_set(("pattern_seeds",), [0, 1, 2]), None),
    (_set(("version",), None), "version: null (null only for paper rows)"),
    (_set(("date",), "yesterday"), 'date: expected null or an ISO 8601 date, got "yesterday"'),
    (_set(("link",), "example.org"), 'link: expected null or a plain http(s) URL (no spaces, quotes, parentheses, '
     'angle brackets or \'|\'), got "example.org"'),
    (_set(("link",), "https://a.example/x)![p](https://evil.example/p.png"), None),
    (_set(("link",), "https://a.example/x|y"), None),
    (_set(("name",), "a/b"), None),
    (_set(("name",), "a|b"), None),
    (_set(("results",), {}), "results: expected a list, got {}"),
    (_set(("per_model_clean_err",), [0.5]), None),
    (_set(("train_seeds",), [0, 0]), None),
]


@pytest.mark.parametrize("mutate,message", BROKEN, ids=[f"broken{i}" for i in range(len(BROKEN))])
def test_broken_entries_are_refused(suite, mutate, message):
    e = make_entry()
    mutate(e)
    with pytest.raises(EntryError) as ei:
        validate_entry(e, suite)
    if message is not None:
        assert str(ei.value) == message
    assert ei.value.field  # every refusal names the field


def test_unknown_field_and_seed_messages(suite):
    e = make_entry()
    e["colour"] = "red"
    with pytest.raises(EntryError, match=r"^colour: unknown field \(allowed: format, suite"):
        validate_entry(e, suite)
    e = make_entry()
    e["pattern_seeds"] = [0, 1, 2]
    with pytest.raises(EntryError, match=r"^pattern_seeds: expected base_seed .*, got \[0, 1, 2\]"):
        validate_entry(e, suite)


def test_old_entries_are_refused_with_their_version(suite):
    e = make_entry()
    e["format"] = "bitbench.leaderboard_entry/1"
    with pytest.raises(EntryError, match=r"bitbench 0\.1-0\.2.*submit the result records again"):
        validate_entry(e, suite)


def test_pinned_eval_split_is_checked(configs):
    pinned = load_suite("pinned", configs)
    assert pinned.eval_split == "test[0:500]"
    e = make_entry(suite="pinned")
    with pytest.raises(EntryError, match=r'^protocol\.eval_split: "test\[0:1000\]" differs from suite "pinned" '
                                         r'\("test\[0:500\]"\)'):
        validate_entry(e, pinned)


def test_paper_rows_may_be_partial(suite):
    e = make_entry(paper=True, rerrs=(0.05, None, None))
    e["results"].append({"attack": "random_p0.01", "rate": 0.01, "summary": {}, "note": "reported as >12%"})
    e["clean_err"] = None
    validate_entry(e, suite)
    # ... but not without a citation, and a benchmark row may not lack values
    e2 = copy.deepcopy(e)
    e2["citation"] = None
    with pytest.raises(EntryError, match="^citation: required for rows reported by a paper$"):
        validate_entry(e2, suite)
    e3 = make_entry()
    del e3["results"][1]["per_model"]["rerr"]
    with pytest.raises(EntryError, match=r"^results\[1\]\.per_model\.rerr: missing: a benchmark row gives every "
                                         r"model's per-pattern values"):
        validate_entry(e3, suite)
    e4 = make_entry(paper=True)
    e4["results"][0]["per_model"] = {"rerr": [[0.05] * 3]}
    with pytest.raises(EntryError, match=r"paper rows give no per-model values"):
        validate_entry(e4, suite)


def test_load_entry_checks_file_name_folder_and_suite(tmp_path, configs):
    entries = tmp_path / "entries"
    p = put(entries, make_entry("good"))
    assert load_entry(p, configs_dir=configs)["name"] == "good"
    bad = entries / "toy" / "other.json"
    bad.write_text(p.read_text())
    with pytest.raises(EntryError) as ei:
        load_entry(bad, configs_dir=configs)
    assert str(ei.value) == f"{bad}: name: \"good\" does not match the file name 'other.json'"
    wrong_dir = entries / "nosuch" / "good.json"
    wrong_dir.parent.mkdir()
    wrong_dir.write_text(p.read_text())
    with pytest.raises(EntryError, match=r'suite: "toy" does not match the folder \'nosuch\''):
        load_entry(wrong_dir, configs_dir=configs)


def test_unknown_suite_is_refused(tmp_path, configs):
    entries = tmp_path / "entries"
    p = put(entries, make_entry("x", suite="nosuch"))
    with pytest.raises(EntryError) as ei:
        load_entry(p, configs_dir=configs)
    msg = str(ei.value)
    assert msg.startswith(f"{p}: suite: unknown suite 'nosuch'") and "known: pinned, toy" in msg
    with pytest.raises(EntryError, match="unknown suite 'nosuch'"):
        generate_markdown(entries, configs_dir=configs)


def test_bad_json_is_refused(tmp_path, configs):
    p = tmp_path / "entries" / "toy" / "x.json"
    p.parent.mkdir(parents=True)
    p.write_text("{not json")
    with pytest.raises(EntryError, match=r"x\.json: not valid JSON"):
        load_entry(p, configs_dir=configs)


def test_a_suite_that_does_not_pin_its_eval_split_is_refused(tmp_path, configs):
    (configs / "loose.toml").write_text(TOY_SUITE.replace('"toy"', '"loose"').replace('eval_split = "test[0:1000]"\n',
                                                                                      ""))
    entries = tmp_path / "entries"
    put(entries, make_entry("a", suite="loose"))
    with pytest.raises(EntryError, match=r"a\.json: protocol\.eval_split: suite \"loose\" does not pin its "
                                         r"evaluation images"):
        load_entries(entries, configs_dir=configs)


def test_bad_suite_files(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "h.toml").write_text(TOY_SUITE.replace('"toy"', '"h"').replace("headline_rate = 0.01", "headline_rate = 0.5"))
    with pytest.raises(SuiteError, match=r"headline_rate: 0\.5 is not one of the suite's rates"):
        load_suite("h", d)
    with pytest.raises(SuiteError, match="unknown suite 'zzz'"):
        load_suite("zzz", d)
    (d / "nohead.toml").write_text(TOY_SUITE.replace('"toy"', '"nohead"').replace("headline_rate = 0.01\n", ""))
    assert load_suite("nohead", d).headline_rate == 0.1  # default: the largest rate


# ----------------------------------------------------------------------------------------------------------------
# ranking
def _table_rows(md: str, suite: str) -> list[list[str]]:
    sec = md.split(f"## {suite}\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in sec.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def test_ranking_ties_and_missing_headline(tmp_path, configs):
    entries = tmp_path / "entries"
    put(entries, make_entry("a-worse", rerrs=(0.05, 0.20, 0.5)))
    put(entries, make_entry("b-tie", rerrs=(0.05, 0.10, 0.4), clean=0.03))
    put(entries, make_entry("c-tie-cleaner", rerrs=(0.05, 0.10, 0.6), clean=0.01))
    put(entries, make_entry("d-no-headline", rerrs=(0.01, None, None), paper=True))
    put(entries, make_entry("e-worst", rerrs=(0.02, 0.30, 0.3)))
    put(entries, make_entry("f-no-headline-2", rerrs=(0.01, None, None), clean=0.5, paper=True))
    md = generate_markdown(entries, configs_dir=configs)
    rows = _table_rows(md, "toy")
    assert [(r[0], r[1]) for r in rows] == [
        ("1", "c-tie-cleaner"), ("1", "b-tie"), ("3", "a-worse"), ("4", "e-worst"),
        ("–", "[d-no-headline](https://example.org/paper)"), ("–", "[f-no-headline-2](https://example.org/paper)")]
    header = [c.strip() for c in md.split("## toy\n", 1)[1].split("\n") if c.startswith("|")][0].strip("|").split("|")
    header = [h.strip() for h in header]
    assert header[:7] == ["Rank", "Entry", "Defense", "Model", "Bits", "Models", "Clean Err %"]
    assert header[7:10] == ["RErr 0.1%", "**RErr 1%**", "RErr 10%"] and header[-1] == "Marks"
    by_name = {r[1].split("]")[0].lstrip("["): r for r in rows}
    assert by_name["c-tie-cleaner"][5:10] == ["1", "1.00", "5.00", "10.00", "60.00"]   # constant chips: CI = point
    assert by_name["d-no-headline"][8:10] == ["–", "–"] and by_name["d-no-headline"][-1] == "†"
    assert "† Reported by the paper, not reproduced by this benchmark: A. Author, Some paper, 2024" in md
    suite = load_suite("toy", configs)
    ranks = ranked_entries(load_entries(entries, configs_dir=configs)["toy"][1], suite)
    assert [r for r, _ in ranks] == [1, 1, 3, 4, None, None]


def test_notes_become_footnotes(tmp_path, configs):
    entries = tmp_path / "entries"
    e = make_entry("p", rerrs=(0.05, None, None), paper=True)
    e["results"].append({"attack": "random_p0.1", "rate": 0.1, "summary": {}, "note": "reported as >12%"})
    e["notes"] = ["read off a figure"]
    put(entries, e)
    md = generate_markdown(entries, configs_dir=configs)
    assert _table_rows(md, "toy")[0][-1] == "† [1] [2]"
    assert "[1] read off a figure." in md and "[2] RErr at p = 10%: reported as >12%." in md


# ----------------------------------------------------------------------------------------------------------------
# determinism
def _fill(entries: Path, order):
    specs = {"a": (0.05, 0.2, 0.5), "b": (0.05, 0.1, 0.4), "c": (0.02, 0.15, 0.3)}
    for n in order:
        put(entries, make_entry(n, rerrs=specs[n]))


def test_generation_is_deterministic(tmp_path, configs, monkeypatch):
    e1, e2 = tmp_path / "e1", tmp_path / "e2"
    _fill(e1, "abc")
    _fill(e2, "cba")
    md1 = generate_markdown(e1, configs_dir=configs)
    assert md1 == generate_markdown(e1, configs_dir=configs)
    assert md1 == generate_markdown(e2, configs_dir=configs)
    assert md1.startswith("<!-- GENERATED FILE: do not edit by hand.")
    # independent of the order the file system lists files and folders
    real_iterdir, real_glob = Path.iterdir, Path.glob
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(reversed(list(real_iterdir(self)))))
    monkeypatch.setattr(Path, "glob", lambda self, pat: iter(reversed(sorted(real_glob(self, pat)))))
    assert generate_markdown(e1, configs_dir=configs) == md1


def test_write_leaderboard_bytes_and_check(tmp_path, configs, capsys):
    entries = tmp_path / "entries"
    _fill(entries, "abc")
    out = tmp_path / "LB.md"
    argv = ["leaderboard", "--entries", str(entries), "--configs", str(configs), "--out", str(out)]
    assert lcli.main(argv) == 0
    b1 = out.read_bytes()
    assert lcli.main(argv) == 0
    assert out.read_bytes() == b1
    assert lcli.main(argv + ["--check"]) == 0
    out.write_text(out.read_text() + "hand edit\n")
    assert lcli.main(argv + ["--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".LB.md")]  # no temp files left


def test_suite_filter_and_empty_suite(tmp_path, configs):
    entries = tmp_path / "entries"
    _fill(entries, "a")
    md = generate_markdown(entries, ["pinned"], configs_dir=configs)
    assert "## pinned" in md and "## toy" not in md and "No entries yet." in md
    assert "## toy" in generate_markdown(entries, ["toy"], configs_dir=configs)


# ----------------------------------------------------------------------------------------------------------------
# submit
def test_submit_round_trip(tmp_path, configs):
    recs = [make_record(r, rerr=(0.1 * (i + 1), 0.1 * (i + 1) + 0.02, 0.1 * (i + 1) + 0.04), train_seed=s)
            for i, r in enumerate(reversed(RATES)) for s in (0, 1)]
    paths = write_records(tmp_path, recs)
    out = submit(paths, citation="Me, 2024", link="https://example.org/x", out_dir=tmp_path / "entries",
                 suite_file=configs / "toy.toml")
    assert out == tmp_path / "entries" / "toy" / "lenet-rquant.json"
    entry = load_entry(out, configs_dir=configs)
    assert entry["reported_by"] == "benchmark" and entry["citation"] == "Me, 2024"
    assert [r["rate"] for r in entry["results"]] == RATES
    assert entry["train_seeds"] == [0, 1] and entry["per_model_clean_err"] == [0.02, 0.02]
    by_rate = {}
    for r in recs:
        by_rate.setdefault(r["rate"], []).append(r)
    for r in entry["results"]:
        want = by_rate[r["rate"]]
        assert r["per_model"]["rerr"] == [w["patterns"]["rerr"] for w in want]   # models in seed order
        s = r["summary"]["rerr"]
        flat = [v for w in want for v in w["patterns"]["rerr"]]
        assert s["mean"] == pytest.approx(sum(flat) / len(flat), abs=1e-12)
        assert s["model_sd"] == pytest.approx(0.0, abs=1e-12)           # both models gave the same values
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
        assert r["n_patterns"] == 3 and len(r["config_hash"]) == 16
    assert entry["clean_err"] == 0.02 and entry["n_params"] == 61706 and entry["version"] == "0.3.0"
    assert entry["pattern_seeds"] == [100, 101, 102] and entry["checkpoints"] == []
    assert entry["date"] == "2024-05-03T10:00:00+00:00"  # the newest record
    assert entry["protocol"]["eval_split"] == "test[0:1000]"
    assert isinstance(entry["config_hash"], str) and len(entry["config_hash"]) == 16
    # the same records in another order give the same bytes
    b = out.read_bytes()
    out2 = submit(list(reversed(paths)), citation="Me, 2024", link="https://example.org/x",
                  out_dir=tmp_path / "entries", suite_file=configs / "toy.toml")
    assert out2 == out and out.read_bytes() == b
    assert sorted(p.name for p in out.parent.iterdir()) == ["lenet-rquant.json"]  # atomic: no temp files left
    # and it shows up in the table
    md = generate_markdown(tmp_path / "entries", configs_dir=configs)
    row = _table_rows(md, "toy")[0]
    assert row[1] == "[lenet-rquant](https://example.org/x)" and row[2] == "`rquant`" and row[5] == "2"
    assert row[8].startswith("22.00 [")   # RErr at the headline rate, mean [95% CI]


def test_submit_name_and_lookup_by_suite_name(tmp_path, configs, monkeypatch):
    paths = write_records(tmp_path, [make_record(r, defense="randbet:p=0.05") for r in RATES])
    import bitbench.configs.suite as suite_format

    monkeypatch.setattr(suite_format, "packaged_suites_dir", lambda: configs)
    out = submit(paths, out_dir=tmp_path / "entries")
    assert out.name == "lenet-randbet-p0.05.json"
    out = submit(paths, name="my-row", out_dir=tmp_path / "entries")
    assert out.name == "my-row.json" and load_entry(out)["name"] == "my-row"
    with pytest.raises(EntryError, match="^name: expected letters"):
        submit(paths, name="../evil", out_dir=tmp_path / "entries")


REFUSALS = [
    ("mixed suites", lambda: [make_record(0.001), make_record(0.01, suite="pinned"), make_record(0.1)],
     r"^suite: the records are of several suites \(pinned, toy\); one entry holds one suite"),
    ("mixed defenses", lambda: [make_record(0.001), make_record(0.01, defense="clip"), make_record(0.1)],
     r"^defense: \"clip\" \(random_p0\.01\) differs from \"rquant\" \(random_p0\.001\): one entry holds "
     r"records of the same suite, model and defense"),
    ("duplicate rate", lambda: [make_record(0.001), make_record(0.01), make_record(0.01, attack="random_p0.01:x=1"),
                                make_record(0.1)], r"^results\[2\]\.rate: duplicate rate 0\.01 \(also results\[1\]\)"),
    ("missing rate", lambda: [make_record(0.001), make_record(0.1)],
     r"^results: missing rates of the suite: 0\.01 \(give one result per rate"),
    ("extra rate", lambda: [make_record(r) for r in RATES + [0.05]],
     r"^results\[2\]\.rate: 0\.05 is not one of the protocol's rates"),
    ("patterns", lambda: [make_record(r, patterns=2) for r in RATES],
     r"^results\[0\]\.n_patterns: 2 differs from protocol\.patterns \(3\)"),
    ("dataset", lambda: [make_record(r, dataset="mnist") for r in RATES],
     r"^protocol\.dataset: \"mnist\" differs from suite \"toy\" \(\"mnist5k\"\): results are not comparable"),
    ("seeds", lambda: [make_record(r, base_seed=0) for r in RATES],
     r"^pattern_seeds: expected base_seed \.\. base_seed \+ patterns - 1, got \[0, 1, 2\]"),
    ("clean error", lambda: [make_record(0.001), make_record(0.01, clean=0.05), make_record(0.1)],
     r"^clean_err: model 0: 0\.05 under random_p0\.01 differs from 0\.02 under random_p0\.001: not the same trained "
     r"model"),
    ("robust error below the clean error", lambda: [make_record(r, clean=0.2) for r in RATES],
     r"patterns\.rerr\[0\]: 0\.1 is below the pattern's error .* or the clean error \(0\.2\)"),
    ("non-rate attack", lambda: [make_record(r) for r in RATES] + [make_record(None, attack="bfa_n20")],
     r"^results\[3\]\.attack: \"bfa_n20\" is neither a rate attack nor one of the suite's attacks \[\]"),
    ("models of other attacks", lambda: [make_record(0.001), make_record(0.001, train_seed=1), make_record(0.01),
                                         make_record(0.1)],
     r"^train_seed: the records of random_p0\.01 are of models \[0\], those of random_p0\.001 of \[0, 1\]"),
]


@pytest.mark.parametrize("what,records,pattern", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_submit_refusals(tmp_path, configs, what, records, pattern):
    paths = write_records(tmp_path, records())
    with pytest.raises(EntryError, match=pattern):
        submit(paths, out_dir=tmp_path / "entries", suite_file=configs / "toy.toml")
    assert not (tmp_path / "entries").exists()  # nothing written


def test_submit_refuses_malformed_records_and_unknown_suites(tmp_path, configs):
    rec = make_record(0.01)
    rec["summary"]["rerr"]["mean"] = "12%"
    (p,) = write_records(tmp_path, [rec])
    with pytest.raises(EntryError) as ei:
        submit([p], suite_file=configs / "toy.toml", out_dir=tmp_path / "e")
    assert str(ei.value) == (f'{p}: summary.rerr.mean: "12%" does not match the per-pattern values (0.12): the record '
                             'was edited or damaged')
    rec = make_record(0.01)
    del rec["clean"]["err"]
    (p,) = write_records(tmp_path, [rec], sub="r2")
    with pytest.raises(EntryError, match=r"r2/.*: clean: expected \{err, nonfinite\}: the clean memory's values"):
        submit([p], suite_file=configs / "toy.toml", out_dir=tmp_path / "e")
    (p,) = write_records(tmp_path, [dict(make_record(0.01), format="something")], sub="r3")
    with pytest.raises(EntryError, match=r"format: expected \"bitbench.result/3\""):
        submit([p], suite_file=configs / "toy.toml", out_dir=tmp_path / "e")
    (p,) = write_records(tmp_path, [dict(make_record(0.01), format="bitbench.result/2")], sub="r5")
    with pytest.raises(EntryError, match=r"a record of bitbench 0\.1-0\.2; this version reads \"bitbench.result/3\""):
        submit([p], suite_file=configs / "toy.toml", out_dir=tmp_path / "e")
    paths = write_records(tmp_path, [make_record(r, suite="nosuch") for r in RATES], sub="r4")
    with pytest.raises(SuiteError, match="unknown suite 'nosuch'"):
        submit(paths, out_dir=tmp_path / "e", configs_dir=configs)
    with pytest.raises(EntryError, match=r"the records are of suite \"nosuch\""):
        submit(paths, out_dir=tmp_path / "e", suite_file=configs / "toy.toml")


def test_cli_submit_and_errors(tmp_path, configs, capsys):
    paths = write_records(tmp_path, [make_record(r) for r in RATES])
    argv = ["submit", *map(str, paths), "--entries", str(tmp_path / "entries"), "--suite-file",
            str(configs / "toy.toml"), "--name", "cli-row", "--citation", "C", "--link", "https://x.org"]
    assert lcli.main(argv) == 0
    assert "cli-row.json" in capsys.readouterr().out
    assert load_entry(tmp_path / "entries" / "toy" / "cli-row.json", configs_dir=configs)["citation"] == "C"
    assert lcli.main(["submit", str(paths[0]), "--entries", str(tmp_path / "entries"), "--suite-file",
                      str(configs / "toy.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: results: missing rates of the suite: 0.01, 0.1")
    assert lcli.main(["submit", str(tmp_path / "nope.json"), "--suite-file", str(configs / "toy.toml")]) == 2
    assert "nope.json: cannot read" in capsys.readouterr().err
    assert lcli.main(["leaderboard", "--entries", str(tmp_path / "entries"), "--configs", str(tmp_path),
                      "--out", str(tmp_path / "x.md")]) == 2
    assert "unknown suite 'toy'" in capsys.readouterr().err


def test_cli_parsers_are_pluggable():
    import argparse

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    lcli.add_submit_arguments(sub.add_parser("submit"))
    lcli.add_leaderboard_arguments(sub.add_parser("leaderboard"))
    a = p.parse_args(["leaderboard"])
    # --out: None = LEADERBOARD.md, unless only --html is given (then the site alone is written)
    assert a.out is None and a.suite is None and a.entries is None and a.plots is None and a.html is None
    a = p.parse_args(["submit", "a.json", "b.json", "--name", "n"])
    assert a.result_files == ["a.json", "b.json"] and a.name == "n" and a.suite_file is None


def test_standalone_module_and_no_torch(tmp_path, configs):
    entries = tmp_path / "entries"
    _fill(entries, "ab")
    code = ("import sys, bitbench.leaderboard, bitbench.leaderboard.cli, bitbench.leaderboard.generate, "
            "bitbench.leaderboard.plot\n"
            f"bitbench.leaderboard.generate_markdown({str(entries)!r}, configs_dir={str(configs)!r})\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'torch' or m.split('.')[:2] in "
            "(['bitbench', 'defenses'], ['bitbench', 'attacks'], ['bitbench', 'kernels'], ['bitbench', 'harness'])]\n"
            "assert not bad, bad\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)
    r = subprocess.run([sys.executable, "-m", "bitbench.leaderboard.cli", "leaderboard", "--entries", str(entries),
                        "--configs", str(configs)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "LEADERBOARD.md").read_text().startswith("<!-- GENERATED FILE")


# ----------------------------------------------------------------------------------------------------------------
# the shipped entries and LEADERBOARD.md
def test_shipped_entries_are_valid_and_ordered():
    if not (REPO / "configs" / "cifar10.toml").is_file():
        pytest.skip("configs/cifar10.toml is not in this checkout")
    data = load_entries()
    suite, entries = data["cifar10"]
    assert suite.headline_rate == 0.01
    names = [e["name"] for _, e in ranked_entries(entries, suite)]
    # the paper's central finding: RandBET < Clipping < RQuant << Normal
    assert names == ["paper-randbet-wmax0.1-p1", "paper-clipping-wmax0.1", "paper-rquant", "paper-normal"]
    assert all(e["reported_by"] == "paper" and "2006.13977" in e["citation"] for e in entries)
    assert set(entry_files()) == set(data)


def test_leaderboard_md_is_generated_from_the_entries():
    """LEADERBOARD.md must be regenerated (python -m benchmark leaderboard) whenever an entry changes."""
    if not (REPO / "configs" / "cifar10.toml").is_file():
        pytest.skip("configs/cifar10.toml is not in this checkout")
    md = REPO / "LEADERBOARD.md"
    assert md.is_file()
    # The shipped file links the plots in leaderboard/plots/ (python -m benchmark leaderboard --plots ...).
    plots = REPO / "leaderboard" / "plots"
    links = {p.stem: f"leaderboard/plots/{p.name}" for p in sorted(plots.glob("*.png"))} if plots.is_dir() else None
    assert md.read_text(encoding="utf-8") == generate_markdown(DEFAULT_ENTRIES_DIR, plot_links=links), (
        "LEADERBOARD.md is stale: run `python -m benchmark leaderboard --plots leaderboard/plots` in the "
        "repository root")


@pytest.mark.parametrize("defense, params, follows", [
    ("rquant", {"bits": 8, "w_max": 1.0}, True),
    ("randbet:p=0.1", {"p": 0.1, "bits": 8}, True),
    ("rquant:bits=4,granularity=group:32", {"bits": 4, "granularity": "group:32"}, False),
    ("rquant:bits=4+secded", {"bits": 4}, False),
    ("rquant+secded", {"bits": 8}, True),
    ("bfloat16", {"bits": "all", "w_max": 1.0}, False),   # the width is the format's (16)
    ("mydefense", {}, True),
])
def test_width_follows_suite(defense, params, follows):
    from bitbench.configs.entry import width_follows_suite

    assert width_follows_suite(defense, params) is follows
