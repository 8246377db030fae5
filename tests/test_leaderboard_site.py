"""The leaderboard website (leaderboard/site.py and its modules, leaderboard/svg.py): pages are a pure function of
the entries and the column declarations; cells show the entries' means with their 95% CIs as the core formats them,
ranks are the rank groups and censoring-aware flip ranks of leaderboard/ranking.py, censored flips show as '> n';
entry strings are escaped; a column is one declaration; a rebuild removes stale pages and never overwrites foreign
files. The entries (format /2) are built here from hand-made result records through the core's entry projection
(several trained models each). No browser and no torch needed (the browser test is
tests/test_leaderboard_browser.py)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bitbench.configs.cells import group_cells
from bitbench.configs.fileio import SAFE_NAME_RE
from bitbench.configs.entry import entry_from_cells, result_summary, validate_entry
from bitbench.configs.record import PatternResult, ResultRecord
from bitbench.configs.suite import format_rate, load_suite
from bitbench.leaderboard import cli as lcli
from bitbench.leaderboard import site, site_pages, svg
from bitbench.leaderboard.entries import load_entries, write_entry
from bitbench.leaderboard.ranking import adversarial_ranked, ranked_entries

REPO = Path(__file__).resolve().parent.parent
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# ----------------------------------------------------------------------------------------------------------------
# a hand-made suite and its entries (format /2), built from result records by the core's projection
BOARD_SUITE = """\
name = "board"
description = "A hand-made suite for the website tests: LeNet on MNIST-5k under random and adversarial bit flips"
dataset = "mnist5k"
model = "lenet"
bits = 8
defenses = ["normal", "rquant", "clip", "randbet:p=0.1", "float32", "rquant+secded"]
attacks = ["bfa_n100", "budget_e10", "budget_e40"]
rates = [0.001, 0.01, 0.05, 0.1]
headline_rate = 0.05
patterns = 5
base_seed = 100
train_seeds = [0, 1, 2]
eval_split = "test[0:1000]"

[model_options]
norm = "none"

[train]
epochs = 2
batch_size = 128
lr = 0.05
"""
RATES = (0.001, 0.01, 0.05, 0.1)
SWEEP = (1, 2, 5, 10, 20, 50, 100)
TARGET = 0.89
CHIP = (-1.0, -0.5, 0.0, 0.5, 1.0)  # the chips' (patterns', trials') relative offsets, the same for every model
TOP5 = {"kind": "frac", "title": "Top-5 Err %", "fmt": "pct", "lower_is_better": True, "clean": True,
        "doc": "Top-5 error: the label is not among the five largest logits"}
SECDED = {"spec": "secded", "data_bits": 64, "check_bits": 8, "image_bits": 72 * 964, "memory_overhead": 0.125,
          "stages": [{"name": "secded", "spec": "secded", "counts": {"detected": "flipped bits in mismatching words",
                                                                     "flipped": "flipped data bits"},
                      "ratios": {"detection": ["detected", "flipped"]}}]}
N = None  # a trial that did not reach the target within the budget
# name: (defense, clean error, RErr per rate, flips to target [model][trial] or None (no adversarial results),
#        RErr under budget_e10 and budget_e40, options)
SPECS = {
    "lenet-normal": ("normal", 0.012, (0.02, 0.15, 0.55, 0.85),
                     [[2, 3, 2, 4, 3], [3, 2, 2, 3, 5], [2, 2, 3, 3, 4]], (0.6, 0.9), {}),
    "lenet-rquant": ("rquant", 0.013, (0.015, 0.04, 0.2, 0.45),
                     [[12, 20, 25, 18, 30], [15, 22, 19, 40, N], [20, 18, 33, 25, 21]], (0.2, 0.5), {"metric": True}),
    "lenet-clip": ("clip", 0.011, (0.012, 0.02, 0.06, 0.15),
                   [[N, 60, N, N, 80], [N] * 5, [70, N, N, N, N]], (0.05, 0.12), {"metric": True, "checkpoints": True}),
    "lenet-randbet": ("randbet:p=0.1", 0.012, (0.013, 0.021, 0.061, 0.14), [[N] * 5] * 3, (0.04, 0.1), {}),
    "lenet-rquant-secded": ("rquant+secded", 0.013, (0.013, 0.014, 0.03, 0.12),
                            [[40, 50, N, 45, 60], [35, N, N, 55, 48], [42, 44, 58, N, 61]], (0.02, 0.05),
                            {"protection": True}),
    "lenet-float32": ("float32", 0.010, (0.5, 0.9, 0.9, 0.9), None, None, {"nonfinite": True}),
}


def _digest(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _record(name, attack, pats, *, seed, clean, opts, rate=None, flips=None, target=None) -> ResultRecord:
    defense = SPECS[name][0]
    prot = copy.deepcopy(SECDED) if opts.get("protection") else None
    rec = ResultRecord(
        suite="board", dataset="mnist5k", eval_split="test[0:1000]", n_eval=1000, model="lenet",
        model_options={"norm": "none"}, n_params=61706, defense=defense, defense_name=defense.split(":")[0],
        defense_params={}, bits=8, attack=attack, attack_name=attack.split("_")[0],
        attack_params={}, attack_kind="random" if rate is not None else "adversarial", rate=rate, flips=flips,
        clean_err=clean, patterns=pats, train_seed=seed, version="0.3.0", config_hash=_digest(name, attack, seed)[:16],
        device="cpu", timings={"total": 1.0}, date="2024-05-01T10:00:00+00:00", target=target,
        weights_sha256=_digest("weights", name, seed), protection=prot,
        memory_overhead=0.125 if prot else 0.0, decode_ms=1.25 + 0.1 * seed if prot else 0.0,
        metrics={"top5_err": TOP5} if opts.get("metric") else {},
        clean_values={"top5_err": clean / 3} if opts.get("metric") else {})
    return ResultRecord.from_json(rec.to_json())  # a record as the harness writes it, read back (validated)


def _pattern(k, err, rerr, opts, *, seed=None, nonfinite=0, **trial) -> PatternResult:
    p = PatternResult(index=k, seed=seed, err=err, rerr=rerr, nonfinite=nonfinite, masked=1000 - nonfinite,
                      due=nonfinite, values={"top5_err": rerr / 3} if opts.get("metric") else {}, **trial)
    if opts.get("protection"):
        p.protection = {"flips": 10, "residual": 0, "failed": 0, "secded.detected": 9, "secded.flipped": 10}
    return p


def _bfa_trial(k, f, clean, m, opts) -> PatternResult:
    """A BFA trial: test error rising with the flips, reaching the target at f flips (stopping there), or never
    within the 100 flips (f None: right-censored)."""
    used = f if f is not None else 100
    horizon = f if f is not None else 300 + 100 * m
    curve = []
    for n in SWEEP:
        e = 0.9 if f is not None and n >= f else min(0.88, clean + (0.88 - clean) * n / horizon)
        curve.append({"flips": n, "flips_used": min(n, used), "err": e, "rerr": min(1.0, e + 0.01), "loss": 1.0,
                      "acc": 1 - e})
    last = curve[-1]
    return _pattern(k, last["err"], last["rerr"], opts, seed=k, flips_used=used,
                    stop_reason="target" if f is not None else "budget", curve=curve, flips_to_target=f)


def _budget_trial(k, v, eps, clean, opts) -> PatternResult:
    rerr = max(clean, min(1.0, v))
    err = max(0.0, rerr - 0.005)
    curve = [{"flips": eps, "flips_used": eps, "err": err, "rerr": rerr, "loss": 1.0, "acc": 1 - err}]
    return _pattern(k, err, rerr, opts, seed=k, flips_used=eps, stop_reason="budget", curve=curve,
                    flips_to_target=None)


def board_records(name: str) -> list[ResultRecord]:
    """The result records of one entry of SPECS: 3 trained models x (4 rates, BFA, 2 budget attacks)."""
    defense, clean0, rerrs, ftt, budgets, opts = SPECS[name]
    out = []
    for m in range(3):
        clean = clean0 + 0.001 * (m - 1)
        for rate, base in zip(RATES, rerrs):
            pats = []
            for k, c in enumerate(CHIP):
                rerr = min(1.0, max(clean, base * (1 + 0.1 * (m - 1) + 0.2 * c)))
                nf = (3 * k + m) % 7 if opts.get("nonfinite") and rate >= 0.05 and k % 2 else 0
                pats.append(_pattern(k, max(0.0, rerr - 0.002), rerr, opts, seed=100 + k, nonfinite=nf))
            out.append(_record(name, f"random_p{rate!r}", pats, seed=m, clean=clean, opts=opts, rate=rate))
        if ftt is None:
            continue
        trials = [_bfa_trial(k, f, clean, m, opts) for k, f in enumerate(ftt[m])]
        out.append(_record(name, "bfa_n100", trials, seed=m, clean=clean, opts=opts, flips=100,
                           target={"metric": "err", "value": TARGET}))
        for eps, v in zip((10, 40), budgets):
            trials = [_budget_trial(k, v * (1 + 0.1 * (m - 1) + 0.1 * c), eps, clean, opts)
                      for k, c in enumerate(CHIP)]
            out.append(_record(name, f"budget_e{eps}", trials, seed=m, clean=clean, opts=opts, flips=eps))
    return out


def board_entry(name: str, suite) -> dict:
    cks = None
    if SPECS[name][5].get("checkpoints"):
        cks = [{"path": f"../../weights/board-{name}-{s}.pt", "sha256": _digest("file", name, s), "train_seed": s}
               for s in range(3)]
    return entry_from_cells(group_cells(board_records(name)), suite, name=name, checkpoints=cks)


def paper_entry(suite) -> dict:
    """A row copied from a paper: means alone, one value missing with a note."""
    e = {
        "format": "bitbench.leaderboard_entry/2", "suite": "board", "name": "paper-lenet", "model": "lenet",
        "model_options": {"norm": "none"}, "n_params": None, "checkpoints": [], "defense": "rquant",
        "defense_name": "rquant", "defense_params": {}, "bits": 8,
        "protocol": dict(suite.protocol), "train_seeds": [None], "clean_err": 0.011, "per_model_clean_err": None,
        "metrics": {},
        "results": [{"attack": "random_p0.01", "rate": 0.01, "summary": {"rerr": {"mean": 0.025}}},
                    {"attack": "random_p0.05", "rate": 0.05, "summary": {}, "note": "reported as >10%"}],
        "version": None, "config_hash": None, "pattern_seeds": None, "device": None, "date": "2021-04-01",
        "citation": "A. Author, A paper on LeNet, 2021", "link": "https://example.org/lenet-paper",
        "reported_by": "paper", "notes": ["values read off a figure"]}
    return validate_entry(e, suite)


@pytest.fixture(scope="module")
def board_configs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("configs")
    (d / "board.toml").write_text(BOARD_SUITE)
    return d


def make_board(configs: Path) -> tuple:
    """(the suite, its entries sorted by name)."""
    suite = load_suite("board", configs)
    entries = [board_entry(n, suite) for n in SPECS] + [paper_entry(suite)]
    return suite, sorted(entries, key=lambda e: e["name"])


@pytest.fixture(scope="module")
def board(board_configs):
    return make_board(board_configs)


@pytest.fixture(scope="module")
def board_dir(tmp_path_factory, board) -> Path:
    """The board entries as files (``<dir>/board/<name>.json``)."""
    root = tmp_path_factory.mktemp("entries")
    for e in board[1]:
        write_entry(e, root / "board" / f"{e['name']}.json")
    return root


@pytest.fixture(scope="module")
def shipped():
    if not (REPO / "configs" / "cifar10.toml").is_file():
        pytest.skip("configs/cifar10.toml is not in this checkout")
    return load_entries()


@pytest.fixture(scope="module")
def data(board, shipped):
    return {"board": board, **shipped}


@pytest.fixture(scope="module")
def pages(data):
    return site.build_site(data)


def by_name(entries, name):
    return next(e for e in entries if e["name"] == name)


def result(e, attack):
    return next(r for r in e["results"] if r["attack"] == attack)


def pct(x) -> str:
    return f"{100 * x:.2f}"


def ci_text(mean, lo, hi) -> str:
    """The cell of a mean with its 95% CI (independent of the core's formatter: the interval is left out where both
    ends show as the mean)."""
    return pct(mean) if pct(lo) == pct(mean) == pct(hi) else f"{pct(mean)} [{pct(lo)}, {pct(hi)}]"


def matrix_mean(mat) -> float:
    return sum(sum(row) / len(row) for row in mat) / len(mat)


# ----------------------------------------------------------------------------------------------------------------
# a small HTML tree (html.parser) to look at pages structurally
class Node:
    def __init__(self, tag, attrs, parent=None):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, dict(attrs), parent, [], []

    def iter(self, tag=None):
        if tag is None or self.tag == tag:
            yield self
        for c in self.children:
            yield from c.iter(tag)

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def find(self, tag, **attrs):
        return next((n for n in self.iter(tag) if all(n.attrs.get(k) == v for k, v in attrs.items())), None)


class TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        n = Node(tag, attrs, self.cur)
        self.cur.children.append(n)
        if tag not in VOID:
            self.cur = n

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, attrs, self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        assert n is not self.root, f"stray </{tag}>"
        self.cur = n.parent

    def handle_data(self, data):
        self.cur.text.append(data)


def parse(text: str) -> Node:
    b = TreeBuilder()
    b.feed(text)
    b.close()
    assert b.cur is b.root, f"unclosed <{b.cur.tag}>"
    return b.root


def table_rows(page: Node, table_id: str):
    """[(tr attrs, [td nodes])] of a board table, and its header keys."""
    t = page.find("table", id=table_id)
    assert t is not None, f"no table {table_id}"
    keys = [th.attrs["data-key"] for th in t.find("thead").iter("th")]
    rows = [(tr.attrs, [td for td in tr.children if td.tag == "td"]) for tr in t.find("tbody").iter("tr")]
    return keys, rows


# ----------------------------------------------------------------------------------------------------------------
# the SVG writer
def test_svg_plot_maps_points_and_is_well_formed():
    s = svg.Series("a <b> & \"c\"", ((1.0, 0.0), (10.0, 50.0), (100.0, 100.0), (0.0, 7.0)))
    out = svg.line_plot([s], title="t <x>", x_label="x", y_label="y", x_log=True, x_range=(1.0, 100.0),
                        y_range=(0.0, 100.0), width=600, height=300, legend_width=100, plot_id="p1")
    root = ET.fromstring(out)  # well-formed XML (labels escaped)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f"{ns}title").text == "t <x>"
    circles = root.findall(f".//{ns}circle")
    # margins of the writer: left 58, right legend_width + 16, top 34, bottom 48
    left, pw, top, ph = 58, 600 - 58 - 116, 34, 300 - 34 - 48
    want = [(left + pw * math.log10(x) / 2, top + ph - ph * y / 100) for x, y in ((1, 0), (10, 50), (100, 100))]
    got = [(float(c.get("cx")), float(c.get("cy"))) for c in circles]
    assert len(got) == 3  # x = 0 is left out on a log axis
    for (gx, gy), (wx, wy) in zip(got, want):
        assert abs(gx - wx) < 0.006 and abs(gy - wy) < 0.006
    assert root.find(f".//{ns}clipPath").get("id") == "p1-frame"
    assert "a <b> & \"c\"" in [t.text for t in root.iter(f"{ns}title")]
    assert out == svg.line_plot([s], title="t <x>", x_label="x", y_label="y", x_log=True, x_range=(1.0, 100.0),
                                y_range=(0.0, 100.0), width=600, height=300, legend_width=100, plot_id="p1")


def test_svg_ticks():
    assert svg.log_ticks(0.001, 0.2) == [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
    assert svg.log_ticks(1, 100000) == [1, 10, 100, 1000, 10000, 100000]
    assert svg.linear_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert svg.linear_ticks(0, 1.0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    with pytest.raises(ValueError):
        svg.log_ticks(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# the board's site
def test_the_fixture_entries_are_valid_format_2(board):
    suite, entries = board
    for e in entries:
        assert e["format"] == "bitbench.leaderboard_entry/2"
        validate_entry(e, suite)
    clip = by_name(entries, "lenet-clip")
    assert clip["train_seeds"] == [0, 1, 2] and len(clip["checkpoints"]) == 3
    assert result(clip, "bfa_n100")["per_model"]["flips_to_target"][1] == [None] * 5


def test_site_has_every_page(data, pages):
    want = {"index.html"}
    for name, (_, entries) in data.items():
        want.add(f"{name}/index.html")
        want |= {f"{name}/entries/{e['name']}.html" for e in entries}
    assert set(pages) == want
    index = parse(pages["index.html"])
    assert {a.attrs["href"] for a in index.iter("a") if a.attrs["href"].endswith("/index.html")} == \
        {f"{n}/index.html" for n in data}


def test_random_table_shows_means_with_cis_in_rank_groups(board, pages):
    suite, entries = board
    page = parse(pages["board/index.html"])
    keys, rows = table_rows(page, "t-random")
    ranked = ranked_entries(entries, suite)
    assert [r["data-entry"] for r, _ in rows] == [e["name"] for _, e in ranked]
    assert keys[:7] == ["rank", "entry", "defense", "model", "bits", "models", "clean_err"]
    rate_keys = [f"rerr@{r:.10g}" for r in suite.rates]
    assert [k for k in keys if k.startswith("rerr@")] == rate_keys
    head = keys.index(f"rerr@{suite.headline_rate:.10g}")
    for (attrs, tds), (rank, e) in zip(rows, ranked):
        cell = dict(zip(keys, tds))
        assert cell["rank"].attrs.get("data-sort") == (None if rank is None else repr(float(rank)))
        link = cell["entry"].find("a")
        assert link.attrs["href"] == f"entries/{e['name']}.html" and link.all_text() == e["name"]
        assert cell["models"].all_text() == str(len(e["train_seeds"]))
        for k, rate in zip(rate_keys, suite.rates):
            td = cell[k]
            r = next((x for x in e["results"] if x["rate"] == rate), None)
            s = (r or {}).get("summary", {}).get("rerr")
            if s is None:
                assert td.all_text() == site.MISSING and "data-sort" not in td.attrs
                continue
            if "per_model" in r:  # the stored mean is the mean over models and chips; the CI is recomputed here
                mat = r["per_model"]["rerr"]
                assert abs(s["mean"] - matrix_mean(mat)) < 1e-12
                lo, hi = result_summary(mat, f"board|{e['name']}|{r['attack']}|rerr")["ci95"]
                assert lo <= s["mean"] <= hi and lo < hi
                assert td.all_text() == ci_text(s["mean"], lo, hi)
                assert "3 models x 5 chips" in td.attrs["title"] and "model sd" in td.attrs["title"]
            else:  # a paper row: the mean alone
                assert td.all_text() == pct(s["mean"]) and "paper" in td.attrs["title"]
            assert float(td.attrs["data-sort"]) == s["mean"]
        assert "emph" in tds[head].attrs["class"].split()
        assert e["defense"] in attrs["data-filter"] and e["name"].lower() in attrs["data-filter"]
    ths = {th.attrs["data-key"]: th for th in page.find("table", id="t-random").iter("th")}
    assert ths["rank"].attrs["data-type"] == "num" and ths["entry"].attrs["data-type"] == "text"
    assert ths[rate_keys[0]].attrs["data-better"] == "lower" and ths["entry"].attrs["data-better"] == ""
    assert "mem" in keys and "decode_ms" in keys  # the suite has a protected entry
    assert page.find("svg") is not None and page.find("figure") is not None


def test_rank_groups_share_a_rank(board, pages):
    """Clipping and RandBET differ by less than their chips' spread at the headline rate: one rank; Normal is
    worse than both; the paper row without a headline value has no rank."""
    suite, entries = board
    ranks = {e["name"]: r for r, e in ranked_entries(entries, suite)}
    assert ranks["lenet-clip"] == ranks["lenet-randbet"]
    assert ranks["lenet-normal"] > ranks["lenet-clip"] and ranks["paper-lenet"] is None
    keys, rows = table_rows(parse(pages["board/index.html"]), "t-random")
    cells = {a["data-entry"]: dict(zip(keys, tds)) for a, tds in rows}
    shown = {n: c["rank"].all_text() for n, c in cells.items()}
    assert shown["lenet-clip"] == shown["lenet-randbet"] == str(ranks["lenet-clip"])
    assert "lenet-randbet" in cells["lenet-clip"]["rank"].attrs["title"]
    assert shown["paper-lenet"] == site.MISSING
    assert "per model" in cells["lenet-clip"]["clean_err"].attrs["title"]
    # the paper row's missing value shows its note
    assert cells["paper-lenet"][f"rerr@{suite.headline_rate:.10g}"].attrs["title"] == "reported as >10%"
    assert "†" in cells["paper-lenet"]["entry"].all_text()


def test_plugin_metric_and_nonfinite_columns(board, pages):
    suite, entries = board
    page = parse(pages["board/index.html"])
    keys, rows = table_rows(page, "t-random")
    cells = {a["data-entry"]: dict(zip(keys, tds)) for a, tds in rows}
    # the plug-in metric the entries declare: its title, format and direction from the declaration
    th = page.find("th", **{"data-key": "metric@top5_err"})
    assert th.all_text() == f"Top-5 Err % {format_rate(suite.headline_rate)}" and th.attrs["data-better"] == "lower"
    assert TOP5["doc"] in th.attrs["title"]
    for name in ("lenet-rquant", "lenet-clip"):
        r = next(x for x in by_name(entries, name)["results"] if x["rate"] == suite.headline_rate)
        mat = r["per_model"]["top5_err"]
        s = r["summary"]["top5_err"]
        assert abs(s["mean"] - matrix_mean(mat)) < 1e-12
        assert cells[name]["metric@top5_err"].all_text() == ci_text(s["mean"], *s["ci95"])
    assert cells["lenet-normal"]["metric@top5_err"].all_text() == site.MISSING
    # non-finite outputs: a column only at the rates where some entry had them, as k/n patterns
    nf = [k for k in keys if k.startswith("nonfinite@")]
    assert nf == ["nonfinite@0.05", "nonfinite@0.1"]
    e = by_name(entries, "lenet-float32")
    flat = [v for row in next(x for x in e["results"] if x["rate"] == 0.1)["per_model"]["nonfinite"] for v in row]
    k = sum(1 for v in flat if v)
    assert 0 < k < 15 and cells["lenet-float32"]["nonfinite@0.1"].all_text() == f"{k}/15"
    assert float(cells["lenet-float32"]["nonfinite@0.1"].attrs["data-sort"]) == k / 15
    assert cells["lenet-clip"]["nonfinite@0.1"].all_text() == "0/15"


def _independent_flips(r):
    """(median over every model's trials with censored trials as +inf, reached, trials)."""
    ftt = [math.inf if f is None else f for row in r["per_model"]["flips_to_target"] for f in row]
    s = sorted(ftt)
    n = len(s)
    med = (s[(n - 1) // 2] + s[n // 2]) / 2
    return med, sum(1 for f in ftt if f != math.inf), n


def test_adversarial_table_ranks_censoring_aware_and_shows_censored_flips(board, pages):
    suite, entries = board
    page = parse(pages["board/index.html"])
    keys, rows = table_rows(page, "t-adversarial")
    ranked = adversarial_ranked(entries, suite)
    assert [r["data-entry"] for r, _ in rows] == [e["name"] for _, _, e in ranked]
    # fewer trials reaching chance first: RandBET (0 of 15), Clipping (3), SEC-DED (4), RQuant (14), Normal (15)
    assert [e["name"] for _, _, e in ranked] == ["lenet-randbet", "lenet-clip", "lenet-rquant-secded",
                                                 "lenet-rquant", "lenet-normal"]
    assert [fr for fr, _, _ in ranked] == [1, 2, 3, 4, 5]
    col = keys.index("flips_to_chance")
    for (_, tds), (fr, _, e) in zip(rows, ranked):
        r = result(e, "bfa_n100")
        med, reached, n = _independent_flips(r)
        td = tds[col]
        assert tds[0].all_text() == str(fr)
        if med == math.inf:  # the median trial did not get there within 100 flips: a lower bound
            assert td.attrs["data-bound"] == "1" and td.attrs["data-sort"] == "100.0"
            assert td.all_text().startswith("> 100") and td.all_text().endswith(f"({reached}/{n})")
        else:
            assert "data-bound" not in td.attrs and float(td.attrs["data-sort"]) == med
            assert td.all_text().startswith(f"{med:g} [") and td.all_text().endswith(f"({reached}/{n})")
    cells = {a["data-entry"]: tds for a, tds in rows}
    assert cells["lenet-randbet"][col].all_text() == "> 100 (0/15)"
    assert cells["lenet-normal"][col].all_text() == "3 [2, 5] (15/15)"
    assert cells["lenet-rquant"][col].all_text() == "21 [12, > 100] (14/15)"
    # the error after n flips: mean over models and trials with its 95% CI (the markdown's identity)
    err2 = keys.index("err@2")
    for (_, tds), (_, _, e) in zip(rows, ranked):
        r = result(e, "bfa_n100")
        mat = [[t[1] for t in m] for m in r["curve"]["err"]]
        lo, hi = result_summary(mat, f"board|{e['name']}|bfa_n100|curve.err@{r['curve']['flips'][1]}")["ci95"]
        assert tds[err2].all_text() == ci_text(matrix_mean(mat), lo, hi)
        assert abs(float(tds[err2].attrs["data-sort"]) - matrix_mean(mat)) < 1e-12
    # budgeted attacks: RErr with CI and the rank groups of the largest budget
    assert "rerr@budget_e10" in keys and "rerr@budget_e40" in keys and "budget_rank@budget_e40" in keys
    s = result(by_name(entries, "lenet-clip"), "budget_e40")["summary"]["rerr"]
    assert cells["lenet-clip"][keys.index("rerr@budget_e40")].all_text() == ci_text(s["mean"], *s["ci95"])
    assert "detected@bfa_n100" in keys
    assert cells["lenet-rquant-secded"][keys.index("detected@bfa_n100")].all_text() == "90.00"
    assert "lenet-float32" not in cells and "paper-lenet" not in cells  # no adversarial results


def test_paper_suite_has_no_adversarial_table_and_marks_paper_rows(pages):
    page = parse(pages["cifar10/index.html"])
    assert page.find("table", id="t-adversarial") is None and page.find("table", id="t-energy") is None
    keys, rows = table_rows(page, "t-random")
    assert all("†" in tds[1].all_text() for _, tds in rows)
    assert "mem" not in keys and "decode_ms" not in keys
    # a rate no paper row gives is not a column; a missing value is shown as – and carries no sort key
    assert "rerr@5e-05" not in keys
    normal = next(tds for a, tds in rows if a["data-entry"] == "paper-normal")
    assert normal[0].all_text() == "–" and "data-sort" not in normal[0].attrs
    rquant = dict(zip(keys, next(tds for a, tds in rows if a["data-entry"] == "paper-rquant")))
    assert rquant["rerr@0.01"].all_text() == "32.05"  # a paper's mean: no interval
    entry = parse(pages["cifar10/entries/paper-normal.html"])
    assert "Reported by a paper, not reproduced by this benchmark" in entry.all_text()
    assert "python -m benchmark run --entry" not in entry.all_text()
    assert "The trained models" not in entry.all_text()  # no models of ours, no checkpoints
    heads, rows = _grid_after(parse(pages["cifar10/entries/paper-rquant.html"]), "Random bit errors")
    assert heads == ["p", "RErr %", "note"] and rows[-1] == ["1%", "32.05", "value from the paper's poster"]


def test_entry_page_lists_every_model_checkpoint_and_per_rate_statistics(board, pages):
    suite, entries = board
    e = by_name(entries, "lenet-clip")
    page = parse(pages["board/entries/lenet-clip.html"])
    text = page.all_text()
    assert "python -m benchmark run --entry leaderboard/entries/board/lenet-clip.json" in text
    assert e["config_hash"] in text and "Loads each of the 3 checkpoints" in text
    # every trained model: its training seed, clean error and checkpoint with its SHA-256
    heads, models = _grid_after(page, "Models")
    assert heads == ["Training seed", "Clean Err %", "SHA-256", "Checkpoint"]
    assert len(models) == 3
    for row, ck, clean in zip(models, e["checkpoints"], e["per_model_clean_err"]):
        assert row[:3] == [str(ck["train_seed"]), pct(clean), ck["sha256"]]
        # the path as the entry gives it (relative to its folder), then from the repository root
        assert row[3].replace(" ", "") == f"{ck['path']}=leaderboard/weights/board-lenet-clip-{ck['train_seed']}.pt"
    # per rate: mean, CI, model sd, chip sd, each model's mean
    heads, rows = _grid_after(page, "Random bit errors")
    assert heads[:7] == ["p", "RErr %", "95% CI", "model sd", "chip sd", "per model", "models x chips"]
    assert "Top-5 Err % [95% CI]" in heads
    for rate, row in zip(suite.rates, rows):
        r = next(x for x in e["results"] if x["rate"] == rate)
        mat = r["per_model"]["rerr"]
        s = r["summary"]["rerr"]
        means = [sum(x) / len(x) for x in mat]
        mm = sum(means) / 3
        model_sd = math.sqrt(sum((x - mm) ** 2 for x in means) / 2)
        chip_sd = math.sqrt(sum((v - means[m]) ** 2 for m, x in enumerate(mat) for v in x) / (3 * 4))
        assert row[:7] == [format_rate(rate), pct(mm), f"[{pct(s['ci95'][0])}, {pct(s['ci95'][1])}]",
                           pct(model_sd), pct(chip_sd), ", ".join(pct(x) for x in means), "3 x 5"]
    # adversarial: flips to target per trial, censored as > n
    assert "model 1: > 100, > 100, > 100, > 100, > 100" in text
    heads, rows = _grid_after(page, "bfa_n100")
    assert heads == ["flips", "Err %", "95% CI", "model sd", "trial sd"] and [r[0] for r in rows] == \
        [str(n) for n in SWEEP]
    assert len(list(page.iter("svg"))) == 2  # the per-rate and the per-flip curve
    ids = [c.attrs["id"] for c in page.iter("clippath")]
    assert len(ids) == len(set(ids)) == 2
    # an entry without checkpoints says so and gives the training command of its models
    t = parse(pages["board/entries/lenet-rquant.html"]).all_text()
    assert "names no checkpoint" in t and "none named" in t
    assert "python -m benchmark run --suite board --defense rquant --train-seeds 0,1,2" in t
    assert "names no checkpoint" not in text


def _grid_after(page, heading):
    """(header texts, rows of cell texts) of the first results table after the heading ``heading``."""
    nodes = list(page.iter())
    start = next(i for i, n in enumerate(nodes) if n.tag in ("h2", "h3") and n.all_text().strip() == heading)
    t = next(n for n in nodes[start:] if n.tag == "table" and n.attrs.get("class") == "results")
    heads = [th.all_text() for th in t.find("thead").iter("th")]
    rows = [[td.all_text().strip() for td in tr.children if td.tag == "td"] for tr in t.find("tbody").iter("tr")]
    return heads, rows


def test_protected_entry_page(board, pages):
    e = by_name(board[1], "lenet-rquant-secded")
    page = parse(pages["board/entries/lenet-rquant-secded.html"])
    text = page.all_text()
    assert "12.50% check bits per data bit" in text and "90.00% of the flipped bits" in text
    heads, rows = _grid_after(page, "Random bit errors")
    assert "decode ms" in heads
    r = next(x for x in e["results"] if x["rate"] == 0.001)
    assert rows[0][heads.index("decode ms")] == f"{r['decode_ms']:.2f}" == "1.35"


def test_same_entries_same_bytes(tmp_path, board_dir, board_configs, board):
    a, b = tmp_path / "a", tmp_path / "b"
    site.write_site(a, board_dir, configs_dir=board_configs)
    site.write_site(b, board_dir, configs_dir=board_configs)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    # the order in which entries arrive does not matter
    suite, entries = board
    assert site.build_site({"board": (suite, list(reversed(entries)))}) == site.build_site({"board": board})


def test_pages_allow_only_their_own_inline_style_and_script(pages):
    js = (REPO / "leaderboard" / "assets" / "site.js").read_text()
    for path, text in pages.items():
        root = parse(text)
        csp = next(m.attrs["content"] for m in root.iter("meta") if m.attrs.get("http-equiv") ==
                   "Content-Security-Policy")
        assert "default-src 'none'" in csp
        scripts = list(root.iter("script"))
        assert all(s.all_text() == js and "src" not in s.attrs for s in scripts)
        assert not [n for n in root.iter("link")]  # no external style sheet
        for n in root.iter():
            assert not [k for k in n.attrs if k.startswith("on")], (path, n.tag, n.attrs)
            for k in ("src", "href"):
                v = n.attrs.get(k)
                if v is not None and n.tag != "a":
                    raise AssertionError(f"{path}: <{n.tag} {k}={v!r}>: no external assets")


# ----------------------------------------------------------------------------------------------------------------
# hostile entries
HOSTILE = '<script>alert("x")</script>'


def _hostile_entry(base: dict, name: str, link: str) -> dict:
    e = copy.deepcopy(base)
    e["name"] = name
    e["citation"] = f'{HOSTILE} "quoted" & <img src=x onerror=alert(1)>'
    e["link"] = link
    e["notes"] = [f"note {HOSTILE}", "javascript:alert(3)"]
    e["device"] = 'cpu" onclick="alert(4)'
    e["defense_params"] = dict(e["defense_params"], evil=HOSTILE)
    e["model_options"] = {"norm": HOSTILE}
    e["results"][0]["note"] = '"><svg onload=alert(5)>'
    return e


def _check_safe(pages: dict, hostile_strings) -> None:
    js = (REPO / "leaderboard" / "assets" / "site.js").read_text()
    seen = set()
    for path, text in pages.items():
        root = parse(text)
        for s in root.iter("script"):
            assert s.all_text() == js, f"{path}: a script that is not ours"
        for n in root.iter():
            assert n.tag not in ("img", "iframe", "object", "embed"), f"{path}: <{n.tag}> from an entry"
            assert not [k for k in n.attrs if k.startswith("on")], f"{path}: event handler {n.attrs}"
            href = n.attrs.get("href")
            if href is not None:
                assert not href.lower().startswith("javascript:"), (path, href)
                if "://" in href:
                    assert href.startswith(("https://", "http://")) and '"' not in href and "<" not in href
                    assert n.attrs.get("rel") == "noopener noreferrer", (path, href)
        page_text = root.all_text() + " ".join(str(v) for n in root.iter() for v in n.attrs.values())
        seen |= {h for h in hostile_strings if h in page_text}
    assert seen == set(hostile_strings), f"not shown (as text) anywhere: {set(hostile_strings) - seen}"


def test_hostile_strings_are_escaped_text(board):
    suite, entries = board
    evil = _hostile_entry(by_name(entries, "lenet-rquant-secded"), f'{HOSTILE}"\'&',
                          'https://evil.example/"onmouseover="alert(1)"><script>alert(2)</script>')
    evil["defense"] = f'clip+radar" {HOSTILE}'  # a name, spec and link no validator would let through, straight in
    evil["model"] = f"lenet{HOSTILE}"
    evil["metrics"] = {"top5_err": dict(TOP5, title=f"T {HOSTILE}", doc=f"D {HOSTILE}")}
    pages = site.build_site({"board": (suite, [evil] + entries)})
    _check_safe(pages, [HOSTILE, evil["name"], evil["citation"], evil["link"], evil["defense"], "javascript:alert(3)",
                        f"T {HOSTILE}"])
    names = [p for p in pages if p.startswith("board/entries/")]
    assert all(SAFE_NAME_RE.fullmatch(Path(p).name) for p in names)  # plain names: no path, no markup
    assert f"board/entries/{site.safe_name(evil['name'])}.html" in pages
    assert site.safe_name("index") != "index"  # never the suite page's name


def test_hostile_but_valid_entry_through_the_validator(tmp_path, board, board_configs):
    """An entry that passes validation may still carry markup in its free text, specs and parameters."""
    suite, entries = board
    evil = _hostile_entry(by_name(entries, "lenet-clip"), "lenet-evil", "https://evil.example/a?b=1&c=%3Cx%3E")
    root = tmp_path / "entries"
    write_entry(evil, root / "board" / "lenet-evil.json")
    out = tmp_path / "site"
    site.write_site(out, root, configs_dir=board_configs)
    pages = {p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*.html")}
    _check_safe(pages, [HOSTILE, evil["citation"], "javascript:alert(3)", evil["device"], '"><svg onload=alert(5)>'])
    entry = parse(pages["board/entries/lenet-evil.html"])
    assert [a.attrs["href"] for a in entry.iter("a") if "evil.example" in a.attrs.get("href", "")] == [evil["link"]]
    assert f"python -m benchmark run --entry {root.as_posix()}/board/lenet-evil.json" in entry.all_text()


# ----------------------------------------------------------------------------------------------------------------
# one declaration per column
def test_a_new_column_is_one_declaration(board):
    suite, entries = board
    volts = {e["name"]: 0.6 + 0.01 * i for i, e in enumerate(entries) if i % 3}
    energy = site.Column("v_min", "V_min", ("energy",), "volt", "lower", "Lowest supply voltage with RErr within "
                         "1% of the clean error", lambda v, e: site.Value(v=volts[e["name"]])
                         if e["name"] in volts else None)
    ci = site.Column("rerr_ci", "RErr CI", ("random",), "pct", "lower", "RErr with its 95% CI",
                     lambda v, e: site.Value(v=0.1, lo=0.08, hi=0.12, interval="95% CI over models")
                     if e["name"] == "lenet-clip" else site.Value(v=0.2, lo=0.2000001, hi=0.2000002))
    data = {"board": (suite, entries)}
    plain = parse(site.build_site(data)["board/index.html"])
    assert plain.find("table", id="t-energy") is None
    page = parse(site.build_site(data, columns=site.COLUMNS + (energy, ci))["board/index.html"])
    keys, rows = table_rows(page, "t-energy")
    assert keys == ["entry", "defense", "v_min"]
    assert sorted(a["data-entry"] for a, _ in rows) == sorted(volts)  # rows without a value are left out
    for a, tds in rows:
        assert tds[2].all_text() == f"{volts[a['data-entry']]:.3f}"
        assert float(tds[2].attrs["data-sort"]) == volts[a["data-entry"]]
    th = page.find("th", **{"data-key": "v_min"})
    assert "(V)" in th.attrs["title"] and "lower is better" in th.attrs["title"]
    keys, rows = table_rows(page, "t-random")
    cells = {a["data-entry"]: tds[keys.index("rerr_ci")] for a, tds in rows}
    assert cells["lenet-clip"].all_text() == "10.00 [8.00, 12.00]"  # the core's cell: mean [lo, hi]
    assert "95% CI over models" in cells["lenet-clip"].attrs["title"]
    assert cells["lenet-normal"].all_text() == "20.00"  # an interval that shows as the mean is left out
    with pytest.raises(ValueError, match="format"):
        site.Column("x", "X", ("random",), "percent", "lower", "", lambda v, e: None)
    with pytest.raises(ValueError, match="better"):
        site.Column("x", "X", ("random",), "pct", "smaller", "", lambda v, e: None)


def test_sort_keys_of_numbers_not_text():
    col = site.BoundColumn("k", "K", "pct", "lower", "", "metric", False, lambda e: None)
    td = parse(site_pages.render_cell(col, site.Value(v=0.1234))).find("td")
    assert td.attrs["data-sort"] == "0.1234" and td.all_text() == "12.34"
    td = parse(site_pages.render_cell(col, None)).find("td")
    assert "data-sort" not in td.attrs and td.all_text() == site.MISSING
    td = parse(site_pages.render_cell(site.BoundColumn("f", "F", "count", "higher", "", "metric", False,
                                                       lambda e: None),
                                      site.Value(v=100.0, bound=">", detail="(1/5)"))).find("td")
    assert td.attrs["data-bound"] == "1" and td.all_text() == "> 100 (1/5)"


# ----------------------------------------------------------------------------------------------------------------
# writing: stale pages removed, foreign folders refused, --check
def test_rebuild_removes_stale_pages_and_refuses_foreign_folders(tmp_path, board, board_configs):
    suite, entries = board
    root = tmp_path / "entries"
    for e in entries[:3]:
        write_entry(e, root / "board" / f"{e['name']}.json")
    out = tmp_path / "site"
    site.write_site(out, root, configs_dir=board_configs)
    gone = out / "board" / "entries" / f"{entries[2]['name']}.html"
    assert gone.is_file()
    assert site.check_site(out, root, configs_dir=board_configs) == []
    (root / "board" / f"{entries[2]['name']}.json").unlink()
    assert any("stale" in p for p in site.check_site(out, root, configs_dir=board_configs))
    site.write_site(out, root, configs_dir=board_configs)
    assert not gone.exists() and site.check_site(out, root, configs_dir=board_configs) == []
    manifest = json.loads((out / site.MANIFEST).read_text())
    assert manifest["files"] == sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))
    (out / "board" / "index.html").write_text("edited")
    assert site.check_site(out, root, configs_dir=board_configs) == ["board/index.html differs"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(site.SiteError, match="no site build wrote"):
        site.write_site(foreign, root, configs_dir=board_configs)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    (out / site.MANIFEST).write_text("{broken")
    with pytest.raises(site.SiteError, match="damaged"):
        site.write_site(out, root, configs_dir=board_configs)


def test_cli_html(tmp_path, monkeypatch, capsys, board_dir, board_configs, shipped):
    monkeypatch.chdir(tmp_path)
    opts = ["--entries", str(board_dir), "--configs", str(board_configs)]
    assert lcli.main(["leaderboard", "--html", "site", *opts]) == 0
    assert (tmp_path / "site" / "board" / "index.html").is_file()
    assert not (tmp_path / "LEADERBOARD.md").exists()  # only the site was asked for
    assert "wrote site/index.html" in capsys.readouterr().out.replace(os.sep, "/")
    assert lcli.main(["leaderboard", "--html", "site", "--check", *opts]) == 0
    (tmp_path / "site" / "index.html").write_text("x")
    assert lcli.main(["leaderboard", "--html", "site", "--check", *opts]) == 1
    assert "index.html differs" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    assert lcli.main(["leaderboard", "--html", "other", *opts]) == 2
    assert "no site build wrote" in capsys.readouterr().err
    # the shipped entries: --suite keeps that suite only, the other's pages removed; the markdown beside it
    assert lcli.main(["leaderboard", "--html", "shipped"]) == 0
    assert (tmp_path / "shipped" / "cifar10" / "index.html").is_file()
    assert lcli.main(["leaderboard", "--html", "site", "--suite", "board", "--out", "LB.md", *opts]) == 0
    assert (tmp_path / "LB.md").read_text().startswith("<!-- GENERATED FILE")


def test_site_needs_no_torch(tmp_path, board_dir, board_configs):
    code = ("import sys, bitbench.leaderboard.site as s\n"
            f"s.write_site({str(tmp_path / 'site')!r}, {str(board_dir)!r}, configs_dir={str(board_configs)!r})\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert (tmp_path / "site" / "board" / "index.html").is_file()


def _tbfa_records(asr, ftt):
    """T-BFA records of lenet-clip's models: ASR target 90%, a sweep of 1, 5, 10 flips."""
    opts = SPECS["lenet-clip"][5]
    recs = []
    for m in range(3):
        clean = SPECS["lenet-clip"][1] + 0.001 * (m - 1)
        trials = []
        for k, (a, f) in enumerate(zip(asr[m], ftt[m])):
            used = 10 if f is None else f
            curve = [{"flips": n, "flips_used": min(n, used), "err": 0.2, "rerr": 0.21, "loss": 1.0, "acc": 0.8,
                      "asr": x} for n, x in zip((1, 5, 10), a)]
            trials.append(_pattern(k, 0.2, 0.21, opts, seed=k, flips_used=used,
                                   stop_reason="success" if f is not None else "budget", curve=curve,
                                   flips_to_target=f))
        recs.append(_record("lenet-clip", "tbfa_n10", trials, seed=m, clean=clean, opts=opts, flips=10,
                            target={"metric": "asr", "value": 0.9}))
    return recs


def test_targeted_attack_columns(board):
    """An attack with an ASR target (T-BFA) gets its final ASR and its flips to target; entries without it '–'."""
    suite, entries = board
    suite = suite.replace(attacks=list(suite.attacks) + ["tbfa_n10"])
    asr = [[[0.1, 0.95, 0.95], [0.2, 0.5, 0.9], [0.1, 0.4, 0.5]],
           [[0.1, 0.3, 0.4], [0.92, 0.95, 0.97], [0.1, 0.2, 0.3]],
           [[0.1, 0.9, 0.95], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]]
    ftt = [[5, 10, None], [None, 1, None], [5, None, None]]
    recs = board_records("lenet-clip") + _tbfa_records(asr, ftt)
    e = entry_from_cells(group_cells(recs), suite, name="lenet-clip")
    others = [x for x in entries if x["name"] != "lenet-clip"]
    pages = site.build_site({"board": (suite, [e] + others)})
    keys, rows = table_rows(parse(pages["board/index.html"]), "t-adversarial")
    assert "final@tbfa_n10@asr" in keys and "ftt@tbfa_n10" in keys
    cells = {a["data-entry"]: tds for a, tds in rows}
    final = cells["lenet-clip"][keys.index("final@tbfa_n10@asr")]
    last = [[t[-1] for t in m] for m in asr]
    t = next(r for r in e["results"] if r["attack"] == "tbfa_n10")
    lo, hi = result_summary(last, f"board|lenet-clip|tbfa_n10|curve.asr@{t['curve']['flips'][-1]}")["ci95"]
    assert final.all_text() == ci_text(matrix_mean(last), lo, hi)
    ftt_cell = cells["lenet-clip"][keys.index("ftt@tbfa_n10")]
    # 9 trials: reached at 1, 5, 5, 10; censored (> 10) five times: the median (5th value) is censored
    assert ftt_cell.attrs["data-sort"] == "10.0" and ftt_cell.attrs["data-bound"] == "1"
    assert ftt_cell.all_text() == "> 10 [1, > 10] (4/9)"
    assert cells["lenet-normal"][keys.index("ftt@tbfa_n10")].all_text() == site.MISSING
    th = parse(pages["board/index.html"]).find("th", **{"data-key": "final@tbfa_n10@asr"})
    assert th.all_text() == "ASR tbfa_n10"
    entry = parse(pages["board/entries/lenet-clip.html"])
    heads, rows = _grid_after(entry, "tbfa_n10")
    assert heads == ["flips", "Err %", "95% CI", "model sd", "trial sd", "ASR %", "95% CI", "model sd", "trial sd"]
    titles = [t.all_text() for svg_ in entry.iter("svg") for g in svg_.iter("g") if g.attrs.get("class") == "series"
              for t in g.children if t.tag == "title"]
    assert "tbfa_n10 (mean, 95% CI band)" in titles and "bfa_n100 (mean, 95% CI band)" in titles


def test_a_count_metric_shows_the_mean_of_its_per_model_values(board):
    """Entries store no summary of a count metric (kind 'count'); its column shows the mean [95% CI] of the stored
    per-model values, computed here as for every stored summary."""
    suite, entries = board
    decl = {"kind": "count", "title": "Flipped words", "fmt": "num", "lower_is_better": True, "clean": True,
            "doc": "Words with at least one flipped bit"}
    recs = []
    for r in board_records("lenet-normal"):
        r.metrics = {"flipped_words": decl}
        r.clean_values = {"flipped_words": 0}
        for k, p in enumerate(r.patterns):
            p.values = {"flipped_words": 10 * k + (r.train_seed or 0)}
        recs.append(ResultRecord.from_json(r.to_json()))
    e = entry_from_cells(group_cells(recs), suite, name="lenet-normal")
    head = next(r for r in e["results"] if r["rate"] == suite.headline_rate)
    assert "flipped_words" not in head["summary"] and "flipped_words" in head["per_model"]
    others = [x for x in entries if x["name"] != "lenet-normal"]
    page = parse(site.build_site({"board": (suite, [e] + others)})["board/index.html"])
    keys, rows = table_rows(page, "t-random")
    cell = dict(zip(keys, next(tds for a, tds in rows if a["data-entry"] == "lenet-normal")))["metric@flipped_words"]
    mat = head["per_model"]["flipped_words"]
    lo, hi = result_summary(mat, f"board|lenet-normal|{head['attack']}|flipped_words")["ci95"]
    assert matrix_mean(mat) == 21.0 and cell.all_text() == f"21 [{lo:.3g}, {hi:.3g}]"
    assert page.find("th", **{"data-key": "metric@flipped_words"}).all_text() == "Flipped words 5%"


def test_two_entries_of_one_name_are_refused(board):
    suite, entries = board
    with pytest.raises(ValueError, match="map to the page entries/lenet-clip.html"):
        site.build_site({"board": (suite, entries + [copy.deepcopy(by_name(entries, "lenet-clip"))])})
