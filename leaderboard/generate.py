"""Markdown tables generated from the entry files: a pure, deterministic function of them.

Per suite, one table ranked by RErr at the suite's ``headline_rate`` (lower is better). Ties (equal headline RErr)
share a rank and are listed by clean error, then name; rows without a headline value get no rank and go last.
Rows reported by a paper are marked † and explained in a footnote; missing values are shown as "–".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from bitbench.configs.fileio import atomic_write_text
from bitbench.configs.suite import Suite, format_rate, same_rate

from .entries import DEFAULT_ENTRIES_DIR, load_entries

__all__ = ["generate_markdown", "ranked_entries", "suite_table", "write_leaderboard", "check_leaderboard",
           "plot_paths", "NOTICE", "PAPER_MARK", "MISSING"]

NOTICE = ("<!-- GENERATED FILE: do not edit by hand. It is generated from leaderboard/entries/<suite>/*.json "
          "by `python -m benchmark leaderboard` (or `python -m bitbench.leaderboard.cli leaderboard`). -->")
PAPER_MARK = "†"
MISSING = "–"


def _headline(entry: dict, suite: Suite) -> float | None:
    return _rerr_at(entry, suite.headline_rate) if suite.headline_rate is not None else None


def _rerr_at(entry: dict, rate: float) -> float | None:
    for r in entry["results"]:
        if r["rate"] is not None and same_rate(r["rate"], rate) and r["rerr"] is not None:
            return r["rerr"]["mean"]
    return None


def _attack_rerr(entry: dict, attack: str) -> float | None:
    for r in entry["results"]:
        if r["attack"] == attack and r["rerr"] is not None:
            return r["rerr"]["mean"]
    return None


def ranked_entries(entries: list[dict], suite: Suite) -> list[tuple[int | None, dict]]:
    """``[(rank or None, entry)]`` best first (competition ranking: 1, 2, 2, 4; no headline value: None, last)."""
    inf = float("inf")

    def key(e):
        h = _headline(e, suite)
        c = e["clean_err"]
        return (h is None, round(h, 12) if h is not None else inf, c is None, c if c is not None else inf,
                e["name"])

    ordered = sorted(entries, key=key)
    out, prev, rank = [], None, 0
    for i, e in enumerate(ordered):
        h = _headline(e, suite)
        if h is None:
            out.append((None, e))
            continue
        if prev is None or round(h, 12) != prev:
            rank, prev = i + 1, round(h, 12)
        out.append((rank, e))
    return out


def _pct(x: float | None) -> str:
    return MISSING if x is None else f"{100 * x:.2f}"


def _rate_header(rate: float, suite: Suite) -> str:
    h = f"RErr {format_rate(rate)}"
    return f"**{h}**" if suite.headline_rate is not None and same_rate(rate, suite.headline_rate) else h


def suite_table(entries: list[dict], suite: Suite):
    """The ranked table of one suite as a pandas DataFrame of strings (plus the footnote list)."""
    import pandas as pd

    rates = list(suite.rates)
    rows, notes = [], []  # notes: distinct footnote texts, numbered in order of first appearance
    for rank, e in ranked_entries(entries, suite):
        marks = []
        if e["reported_by"] == "paper":
            marks.append(PAPER_MARK)
        texts = list(e.get("notes") or [])
        texts += [(f"RErr at p = {format_rate(r['rate'])}" if r["rate"] is not None else f"RErr {r['attack']}")
                  + f": {r['note']}" for r in e["results"] if r.get("note")]
        for t in texts:
            t = " ".join(t.split())
            if t not in notes:
                notes.append(t)
            mark = f"[{notes.index(t) + 1}]"
            if mark not in marks:
                marks.append(mark)
        row = {
            "Rank": MISSING if rank is None else str(rank),
            "Entry": f"[{e['name']}]({e['link']})" if e.get("link") else e["name"],
            "Defense": f"`{e['defense']}`",
            "Model": e["model"],
            "Bits": str(e["bits"]),
            "Clean Err": _pct(e["clean_err"]),
        }
        for r in rates:
            row[_rate_header(r, suite)] = _pct(_rerr_at(e, r))
        for a in suite.attacks:
            row[f"RErr {a}"] = _pct(_attack_rerr(e, a))
        row["Marks"] = " ".join(marks)
        rows.append(row)
    columns = (["Rank", "Entry", "Defense", "Model", "Bits", "Clean Err"] + [_rate_header(r, suite) for r in rates]
               + [f"RErr {a}" for a in suite.attacks] + ["Marks"])
    return pd.DataFrame(rows, columns=columns), notes


def _protocol_line(suite: Suite) -> str:
    p = suite.protocol
    split = f"`{p['eval_split']}`" if p["eval_split"] else "the dataset's evaluation split"
    seeds = f"seeds {suite.base_seed}..{suite.base_seed + suite.patterns - 1}"
    rates = ", ".join(format_rate(r) for r in suite.rates) or "none"
    head = format_rate(suite.headline_rate) if suite.headline_rate is not None else "–"
    return (f"Protocol: dataset `{p['dataset']}`, evaluation images {split}, {p['bits']} bit, {p['patterns']} "
            f"random bit error patterns per rate ({seeds}), rates {rates}. Ranked by RErr at p = {head} "
            "(lower is better).")


def _suite_section(suite: Suite, entries: list[dict], plot_link: str | None = None) -> list[str]:
    out = [f"## {suite.name}", ""]
    if suite.description:
        out += [" ".join(suite.description.split()), ""]
    out += [_protocol_line(suite), ""]
    if not entries:
        out += ["No entries yet.", ""]
        return out
    df, notes = suite_table(entries, suite)
    aligns = ["right", "left", "left", "left", "right"] + ["right"] * (len(df.columns) - 6) + ["left"]
    out += [df.to_markdown(index=False, disable_numparse=True, colalign=aligns), ""]
    out += ["Errors in %. Clean Err: test error of the clean quantized model; RErr p: robust test error (wrong on "
            "the clean OR the bit-error-perturbed model) at bit error rate p, mean over patterns; "
            f"{MISSING}: not available.", ""]
    papers = sorted({(e.get("citation") or "", e.get("link") or "") for e in entries if e["reported_by"] == "paper"})
    if papers:
        cites = "; ".join(f"{c} ({l})" if l else c for c, l in papers)
        out += [f"{PAPER_MARK} Reported by the paper, not reproduced by this benchmark: {cites}.", ""]
    for i, text in enumerate(notes, 1):
        out += [f"[{i}] {text if text.endswith('.') else text + '.'}", ""]
    if plot_link:
        out += [f"![RErr against bit error rate, suite {suite.name}]({plot_link})", ""]
    return out


def generate_markdown(entries_dir: str | os.PathLike | None = None, suites: Iterable[str] | None = None, *,
                      configs_dir=None, plot_links: dict | None = None) -> str:
    """The leaderboard as markdown: one ranked table per suite (every suite folder of ``entries_dir``, or the
    given ``suites``). Same entry files -> same bytes. ``plot_links``: ``{suite: relative image path}``."""
    data = load_entries(entries_dir if entries_dir is not None else DEFAULT_ENTRIES_DIR, suites,
                        configs_dir=configs_dir)
    out = [NOTICE, "", "# Bit error robustness leaderboard", "",
           "One row per submitted (model, defense); every row is one JSON file under "
           "`leaderboard/entries/<suite>/`. Submit with `python -m benchmark submit <result files>` and regenerate "
           "this file with `python -m benchmark leaderboard`.", ""]
    if not data:
        out += ["No entries yet.", ""]
    for name, (suite, entries) in data.items():
        out += _suite_section(suite, entries, (plot_links or {}).get(name))
    return "\n".join(out).rstrip("\n") + "\n"


def plot_paths(data: dict, plots_dir: str | os.PathLike) -> dict:
    """``{suite: <plots_dir>/<suite>.png}`` for every suite of ``data`` (as :func:`load_entries` returns) that has
    entries: the plots :func:`write_leaderboard` draws and links."""
    return {name: Path(plots_dir) / f"{name}.png" for name, (_, entries) in data.items() if entries}


def _links(out: Path, paths: dict) -> dict:
    base = out.resolve().parent
    return {s: Path(os.path.relpath(Path(p).resolve(), base)).as_posix() for s, p in paths.items()}


def write_leaderboard(out: str | os.PathLike = "LEADERBOARD.md", entries_dir=None, suites=None, *,
                      configs_dir=None, plots_dir: str | os.PathLike | None = None) -> Path:
    """Generate the markdown (and, with ``plots_dir``, one PNG per suite linked from it) and write it atomically."""
    out = Path(out)
    links = None
    if plots_dir is not None:
        from .plot import write_plots

        links = _links(out, write_plots(entries_dir, plots_dir, suites, configs_dir=configs_dir))
    text = generate_markdown(entries_dir, suites, configs_dir=configs_dir, plot_links=links)
    atomic_write_text(out, text)
    return out


def check_leaderboard(out: str | os.PathLike = "LEADERBOARD.md", entries_dir=None, suites=None, *,
                      configs_dir=None, plots_dir: str | os.PathLike | None = None) -> list[str]:
    """What is stale in ``out`` (and its plots): an empty list when ``out`` is exactly what
    :func:`write_leaderboard` would write with the same arguments and every linked plot exists. Writes nothing."""
    out = Path(out)
    links = None
    problems = []
    if plots_dir is not None:
        data = load_entries(entries_dir if entries_dir is not None else DEFAULT_ENTRIES_DIR, suites,
                            configs_dir=configs_dir)
        paths = plot_paths(data, plots_dir)
        problems += [f"plot {p} is missing" for p in paths.values() if not Path(p).is_file()]
        links = _links(out, paths)
    text = generate_markdown(entries_dir, suites, configs_dir=configs_dir, plot_links=links)
    current = out.read_text(encoding="utf-8") if out.is_file() else None
    if current is None:
        problems.insert(0, f"{out} does not exist")
    elif current != text:
        problems.insert(0, f"{out} differs from what the entries generate")
    return problems
