"""Markdown tables generated from the entry files: a pure, deterministic function of them.

Per suite, one table ranked by RErr at the suite's ``headline_rate`` (lower is better). Ties (equal headline RErr)
share a rank and are listed by clean error, then name; rows without a headline value get no rank and go last.
Rows reported by a paper are marked † and explained in a footnote; missing values are shown as "–".

Where entries carry adversarial curves (the suite's BFA and budgeted attacks), a second table per suite: the error
after each flip budget (mean ± std over trials), the flips to chance (median [min, max] over trials), RErr under
each eps budget; ranked by flips to chance (higher is better; a trial that never reached chance ranks above any
count; ties: lower error after the most flips, then name), with a second rank by RErr under the largest eps budget
(lower is better).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from bitbench.configs.fileio import atomic_write_text
from bitbench.configs.record import flips_summary, format_flips
from bitbench.configs.suite import Suite, format_rate, same_rate

from .entries import DEFAULT_ENTRIES_DIR, load_entries

__all__ = ["generate_markdown", "ranked_entries", "suite_table", "write_leaderboard", "check_leaderboard",
           "plot_paths", "adversarial_attacks", "adversarial_ranked", "adversarial_table", "NOTICE", "PAPER_MARK",
           "MISSING"]

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


_COST_COLS = ("Mem +%", "Decode ms")


def _any_protected(entries: list[dict]) -> bool:
    return any("memory_overhead" in e for e in entries)


def _cost_cells(e: dict) -> dict:
    """Memory overhead (check bits / data bits, %) and the mean decode time per pattern over the entry's random
    bit error results (ms); 0 and – for an unprotected entry."""
    ms = [r["decode_ms"] for r in e["results"] if r.get("rate") is not None and "decode_ms" in r]
    return {"Mem +%": f"{100 * e.get('memory_overhead', 0.0):.2f}",
            "Decode ms": f"{sum(ms) / len(ms):.1f}" if ms else MISSING}


def suite_table(entries: list[dict], suite: Suite):
    """The ranked table of one suite as a pandas DataFrame of strings (plus the footnote list)."""
    import pandas as pd

    rates = list(suite.rates)
    curved = {r["attack"] for e in entries for r in e["results"] if "curve" in r}
    plain = [a for a in suite.attacks if a not in curved]   # attacks with curves: the adversarial table
    rows, notes = [], []  # notes: distinct footnote texts, numbered in order of first appearance
    costs = _any_protected(entries)
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
        if costs:
            row.update(_cost_cells(e))
        for r in rates:
            row[_rate_header(r, suite)] = _pct(_rerr_at(e, r))
        for a in plain:
            row[f"RErr {a}"] = _pct(_attack_rerr(e, a))
        row["Marks"] = " ".join(marks)
        rows.append(row)
    columns = (["Rank", "Entry", "Defense", "Model", "Bits", "Clean Err"] + (list(_COST_COLS) if costs else [])
               + [_rate_header(r, suite) for r in rates] + [f"RErr {a}" for a in plain] + ["Marks"])
    return pd.DataFrame(rows, columns=columns), notes


# -- adversarial results --------------------------------------------------------------------------------------------
def _result(entry: dict, attack: str) -> dict | None:
    return next((r for r in entry["results"] if r["attack"] == attack and r["rerr"] is not None), None)


def adversarial_attacks(entries: list[dict], suite: Suite) -> tuple[str | None, list[str], list[str]]:
    """The suite's attacks with curves: (the one the table ranks by -- the first whose results have an error
    target (BFA) --, the budget attacks -- no target -- by budget, the others, e.g. T-BFA with an ASR target)."""
    flips, budgets, others = None, [], []
    for a in suite.attacks:
        res = [r for e in entries for r in e["results"] if r["attack"] == a and "curve" in r]
        if not res:
            continue
        if all(r["target"] is None for r in res):
            budgets.append(a)
        elif flips is None and all(r["target"] is not None and r["target"]["metric"] == "err" for r in res):
            flips = a
        else:
            others.append(a)
    budgets.sort(key=lambda a: (max(r.get("flips") or 0 for e in entries for r in e["results"] if r["attack"] == a),
                                a))
    return flips, budgets, others


def _flips_key(entry: dict, attack: str | None):
    """Sort key of the flips ranking (smaller first) or None without a result: more flips to chance first
    (a failure to reach it ranks above any count), then a lower error after the most flips."""
    r = _result(entry, attack) if attack else None
    if r is None:
        return None
    med = flips_summary(r["flips_to_target"])["median"]
    last = r["curve"]["err"][-1]
    return (-(float("inf") if med is None else med), round(sum(last) / len(last), 12))


def _budget_key(entry: dict, attack: str | None):
    r = _result(entry, attack) if attack else None
    return None if r is None else round(r["rerr"]["mean"], 12)


def _ranks(entries: list[dict], key) -> dict:
    """Competition ranks (1, 2, 2, 4) by ``key(entry)`` (None: no rank)."""
    ordered = sorted((e for e in entries if key(e) is not None), key=lambda e: (key(e), e["name"]))
    out, prev, rank = {}, None, 0
    for i, e in enumerate(ordered):
        if key(e) != prev:
            rank, prev = i + 1, key(e)
        out[e["name"]] = rank
    return out


def adversarial_ranked(entries: list[dict], suite: Suite) -> list[tuple[int | None, int | None, dict]]:
    """``[(flips rank, budget rank, entry)]`` in flips-rank order (entries without the result last, by name)."""
    flips, budgets, others = adversarial_attacks(entries, suite)
    fr = _ranks(entries, lambda e: _flips_key(e, flips))
    br = _ranks(entries, lambda e: _budget_key(e, budgets[-1] if budgets else None))
    ordered = sorted(entries, key=lambda e: (e["name"] not in fr, fr.get(e["name"], 0), _flips_key(e, flips) or (),
                                             e["name"]))
    return [(fr.get(e["name"]), br.get(e["name"]), e) for e in ordered
            if any(_result(e, a) is not None for a in ([flips] if flips else []) + budgets + others)]


def _ms(values: list) -> str:
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / n) ** 0.5
    return f"{100 * mean:.2f}" if n == 1 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def adversarial_table(entries: list[dict], suite: Suite):
    """The adversarial table of one suite as a DataFrame of strings (None when no entry has such results)."""
    import pandas as pd

    flips, budgets, others = adversarial_attacks(entries, suite)
    ranked = adversarial_ranked(entries, suite)
    if not ranked:
        return None
    sweep = sorted({n for e in entries for r in [_result(e, flips)] if r for n in r["curve"]["flips"]}) \
        if flips else []
    rows = []
    costs = _any_protected(entries)
    detecting = [a for a in ([flips] if flips else []) + list(budgets) + list(others)
                 if any((_result(e, a) or {}).get("detection") is not None for e in entries)]
    for fr, br, e in ranked:
        row = {"Rank": MISSING if fr is None else str(fr),
               "Entry": f"[{e['name']}]({e['link']})" if e.get("link") else e["name"],
               "Defense": f"`{e['defense']}`", "Clean Err": _pct(e["clean_err"])}
        if costs:
            row["Mem +%"] = _cost_cells(e)["Mem +%"]
        r = _result(e, flips) if flips else None
        for n in sweep:
            i = r["curve"]["flips"].index(n) if r is not None and n in r["curve"]["flips"] else None
            row[f"Err {n} flips"] = MISSING if i is None else _ms(r["curve"]["err"][i])
        if flips:
            row["Flips to chance"] = MISSING if r is None else format_flips(flips_summary(r["flips_to_target"]))
        for a in detecting:
            d = _result(e, a)
            row[f"Detected {a}"] = MISSING if d is None or d.get("detection") is None else _pct(d["detection"])
        for a in budgets:
            b = _result(e, a)
            row[f"RErr {a}"] = MISSING if b is None else _ms(b["per_pattern_rerr"]) if b.get("per_pattern_rerr") \
                else _pct(b["rerr"]["mean"])
        for a in others:    # final value of the attack's own metric (e.g. T-BFA's ASR) and its flips to target
            o = _result(e, a)
            metric = o["target"]["metric"] if o is not None else "err"
            row[f"{metric.upper() if metric == 'asr' else 'Err'} {a}"] = MISSING if o is None else \
                _ms(o["curve"][metric][-1])
            row[f"Flips to target {a}"] = MISSING if o is None else format_flips(flips_summary(o["flips_to_target"]))
        if budgets:
            row[f"Rank {budgets[-1]}"] = MISSING if br is None else str(br)
        rows.append(row)
    return pd.DataFrame(rows)


def _adversarial_section(suite: Suite, entries: list[dict], plot_link: str | None) -> list[str]:
    df = adversarial_table(entries, suite)
    if df is None:
        return []
    flips, budgets, others = adversarial_attacks(entries, suite)
    targets = sorted({100 * r["target"]["value"] for e in entries for r in [_result(e, flips)] if r}) if flips else []
    out = ["### Adversarial bit flips", ""]
    words = []
    if flips:
        chance = " / ".join(f"{t:.2f}%" for t in targets)
        words.append(f"`{flips}`: the progressive bit search (BFA) on the attacker split, one curve per trial (each "
                     "trial its own attacker batch); Err n flips: test error once the search has flipped at most n "
                     "bits, mean ± std over trials; Flips to chance: first flip count at which the test error "
                     f"reached {chance}, median [min, max] over trials, (k/T) when only k of T trials got there. "
                     "Ranked by flips to chance (higher is better)")
    if budgets:
        words.append("RErr budget_e{eps}: robust test error under the budgeted attack (at most eps flipped bits, "
                     f"one per weight), mean ± std over trials; Rank {budgets[-1]}: ranked by that column (lower is "
                     "better)")
    if _any_protected(entries):
        words.append("Mem +%: check bits per data bit of a protected memory; Detected: share of the attack's flipped "
                     "bits that fell into groups whose checksum mismatched (they are then recovered)")
    if others:
        words.append("other attacks: their metric (ASR: attack success rate of a targeted attack) after the whole "
                     "search and their flips to target, as above")
    out += ["; ".join(words) + ". Errors in %.", ""]
    aligns = ["right", "left", "left", "right"] + ["right"] * (len(df.columns) - 4)
    out += [df.to_markdown(index=False, disable_numparse=True, colalign=aligns), ""]
    if plot_link:
        out += [f"![Test error against bit flips, suite {suite.name}]({plot_link})", ""]
    return out


def _protocol_line(suite: Suite) -> str:
    p = suite.protocol
    split = f"`{p['eval_split']}`" if p["eval_split"] else "the dataset's evaluation split"
    seeds = f"seeds {suite.base_seed}..{suite.base_seed + suite.patterns - 1}"
    rates = ", ".join(format_rate(r) for r in suite.rates) or "none"
    head = format_rate(suite.headline_rate) if suite.headline_rate is not None else "–"
    return (f"Protocol: dataset `{p['dataset']}`, evaluation images {split}, {p['bits']} bit (unless "
            f"the defense sets its own width: column Bits), {p['patterns']} "
            f"random bit error patterns per rate ({seeds}), rates {rates}. Ranked by RErr at p = {head} "
            "(lower is better).")


def _suite_section(suite: Suite, entries: list[dict], plot_link: str | None = None,
                   flips_link: str | None = None) -> list[str]:
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
            + ("Mem +%: check bits of a protected memory (`+secded`, `+radar`) per data bit; Decode ms: its decode "
               "time per pattern, mean over the rates; " if _any_protected(entries) else "")
            + f"{MISSING}: not available.", ""]
    papers = sorted({(e.get("citation") or "", e.get("link") or "") for e in entries if e["reported_by"] == "paper"})
    if papers:
        cites = "; ".join(f"{c} ({l})" if l else c for c, l in papers)
        out += [f"{PAPER_MARK} Reported by the paper, not reproduced by this benchmark: {cites}.", ""]
    for i, text in enumerate(notes, 1):
        out += [f"[{i}] {text if text.endswith('.') else text + '.'}", ""]
    if plot_link:
        out += [f"![RErr against bit error rate, suite {suite.name}]({plot_link})", ""]
    out += _adversarial_section(suite, entries, flips_link)
    return out


def generate_markdown(entries_dir: str | os.PathLike | None = None, suites: Iterable[str] | None = None, *,
                      configs_dir=None, plot_links: dict | None = None) -> str:
    """The leaderboard as markdown: one ranked table per suite (every suite folder of ``entries_dir``, or the
    given ``suites``). Same entry files -> same bytes. ``plot_links``: ``{suite: relative image path}`` (and
    ``{suite + '-flips': ...}`` for the error-vs-flips plot)."""
    data = load_entries(entries_dir if entries_dir is not None else DEFAULT_ENTRIES_DIR, suites,
                        configs_dir=configs_dir)
    out = [NOTICE, "", "# Bit error robustness leaderboard", "",
           "One row per submitted (model, defense); every row is one JSON file under "
           "`leaderboard/entries/<suite>/`. Submit with `python -m benchmark submit <result files>` and regenerate "
           "this file with `python -m benchmark leaderboard`.", ""]
    if not data:
        out += ["No entries yet.", ""]
    for name, (suite, entries) in data.items():
        links = plot_links or {}
        out += _suite_section(suite, entries, links.get(name), links.get(f"{name}-flips"))
    return "\n".join(out).rstrip("\n") + "\n"


def plot_paths(data: dict, plots_dir: str | os.PathLike) -> dict:
    """``{suite: <plots_dir>/<suite>.png}`` for every suite of ``data`` (as :func:`load_entries` returns) that has
    entries, and ``{suite + '-flips': <plots_dir>/<suite>-flips.png}`` where they carry BFA curves: the plots
    :func:`write_leaderboard` draws and links."""
    out = {}
    for name, (suite, entries) in data.items():
        if entries:
            out[name] = Path(plots_dir) / f"{name}.png"
            if adversarial_attacks(entries, suite)[0] is not None:
                out[f"{name}-flips"] = Path(plots_dir) / f"{name}-flips.png"
    return out


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
