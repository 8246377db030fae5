"""Markdown tables generated from the entry files: a pure, deterministic function of them.

Per suite, one table of rank groups by RErr at the suite's ``headline_rate`` (lower is better; ties where the 95%
CI of the paired difference includes 0: :mod:`.ranking`), each value ``mean [95% CI]`` over models and chips; rows
reported by a paper are marked † and explained in a footnote; missing values are shown as "–". Where entries carry
adversarial curves, a second table per suite: the error after each flip budget, the flips to the target (censored
trials as ``> n``), RErr under each eps budget, ranked by robustness to the flip search (module :mod:`.ranking`),
with a second rank by RErr under the largest eps budget.

Columns come from the declared fields (:mod:`bitbench.configs.entry`, :mod:`bitbench.configs.record`) and the
plug-in metrics the entries declare; every cell is formatted by the core's one cell formatter; every string from
an entry is escaped for markdown (links only when they are plain http(s) URLs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from bitbench.configs.energy import TOLERABLE_FIELD, Bounded, analysis_title, tolerable_cell
from bitbench.configs.entry import ENTRY_FIELDS, RESULT_FIELDS, entry_pattern_fields
from bitbench.configs.fileio import atomic_write_text
from bitbench.configs.record import RECORD_FIELDS
from bitbench.configs.schema import MISSING, format_number, markdown_text, safe_link, summary_cell
from bitbench.configs.stats import format_flips
from bitbench.configs.suite import Suite, format_rate, same_rate

from .entries import DEFAULT_ENTRIES_DIR, load_entries
from .ranking import (adversarial_attacks, adversarial_ranked, curve_summary, entry_flips, headline_result,
                      plot_paths, ranked_entries, rate_result, result_of)

__all__ = ["generate_markdown", "ranked_entries", "suite_table", "write_leaderboard", "check_leaderboard",
           "plot_paths", "adversarial_attacks", "adversarial_ranked", "adversarial_table", "NOTICE", "PAPER_MARK",
           "MISSING", "md_code", "entry_link"]

NOTICE = ("<!-- GENERATED FILE: do not edit by hand. It is generated from leaderboard/entries/<suite>/*.json "
          "by `python -m benchmark leaderboard` (or `python -m bitbench.leaderboard.cli leaderboard`). -->")
PAPER_MARK = "†"
_E = {f.name: f for f in ENTRY_FIELDS}
_R = {f.name: f for f in RESULT_FIELDS}
_RERR = RECORD_FIELDS.get("rerr")


def md_code(s: str) -> str:
    """``s`` as inline code inside a markdown table cell (``|`` escaped, backticks fenced)."""
    s = " ".join(str(s).split()).replace("|", "\\|")
    fence = "``" if "`" in s else "`"
    return f"{fence}{s}{fence}" if fence == "`" else f"{fence} {s} {fence}"


def entry_link(e: dict) -> str:
    name = markdown_text(e["name"])
    link = safe_link(e.get("link"))
    return f"[{name}]({link})" if link else name


def _rate_header(rate: float, suite: Suite) -> str:
    h = f"RErr {format_rate(rate)}"
    return f"**{h}**" if suite.headline_rate is not None and same_rate(rate, suite.headline_rate) else h


def _cell(field, r: dict | None, name: str) -> str:
    if r is None:
        return MISSING
    if field.agg == "any":
        return summary_cell(field, None, values=r.get("per_model", {}).get(name))
    return summary_cell(field, r.get("summary", {}).get(name))


def _shown(field, entries, values) -> bool:
    return field.show == "always" or any(v for v in values)


def suite_table(entries: list[dict], suite: Suite):
    """The ranked table of one suite as a pandas DataFrame of strings (plus the footnote list)."""
    import pandas as pd

    rates = list(suite.rates)
    curved = {r["attack"] for e in entries for r in e["results"] if r.get("curve") is not None}
    plain = [a for a in suite.attacks if a not in curved]   # attacks with curves: the adversarial table
    mem = _E["memory_overhead"]
    dec = _R["decode_ms"]
    show_mem = _shown(mem, entries, [e.get("memory_overhead", 0.0) for e in entries])
    show_dec = _shown(dec, entries, [r.get("decode_ms") for e in entries for r in e["results"]])
    metrics = {}
    for e in entries:
        for f in entry_pattern_fields(e):
            if f.name != "rerr" and f.title and f.level == "pattern":
                metrics.setdefault(f.name, f)
    metrics = {n: f for n, f in metrics.items() if _shown(f, entries, [
        v for e in entries for row in ((headline_result(e, suite) or {}).get("per_model", {}).get(n) or [])
        for v in row] + [(headline_result(e, suite) or {}).get("summary", {}).get(n, {}).get("mean")
                         for e in entries])}
    head = format_rate(suite.headline_rate) if suite.headline_rate is not None else "–"
    tolerable = list(dict.fromkeys(((a["budget"], a["reference"]), analysis_title(a))
                                   for e in entries for a in e.get("tolerable") or []))
    tolerable.sort()
    rows, notes = [], []  # notes: distinct footnote texts, numbered in order of first appearance
    for rank, e in ranked_entries(entries, suite):
        marks = [PAPER_MARK] if e["reported_by"] == "paper" else []
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
        row = {"Rank": MISSING if rank is None else str(rank), _E["name"].title: entry_link(e),
               _E["defense"].title: md_code(e["defense"]), _E["model"].title: markdown_text(e["model"]),
               _E["bits"].title: str(e["bits"]), "Models": str(len(e["train_seeds"])),
               _E["clean_err"].title: format_number("pct", e["clean_err"])}
        if show_mem:
            row[mem.title] = format_number(mem.fmt, e.get("memory_overhead", 0.0))
        if show_dec:
            ms = [r["decode_ms"] for r in e["results"] if r.get("rate") is not None and r.get("decode_ms") is not None]
            row[dec.title] = format_number(dec.fmt, sum(ms) / len(ms) if ms else None)
        for rt in rates:
            row[_rate_header(rt, suite)] = _cell(_RERR, rate_result(e, rt), "rerr")
        for a in plain:
            row[f"RErr {md_code(a)}"] = _cell(_RERR, result_of(e, a), "rerr")
        for n, f in metrics.items():
            row[f"{markdown_text(f.title)} {head}"] = _cell(f, headline_result(e, suite), n)
        for key, title in tolerable:
            a = next((x for x in e.get("tolerable") or [] if (x["budget"], x["reference"]) == key), None)
            row[markdown_text(title)] = MISSING if a is None else markdown_text(tolerable_cell(
                Bounded(**a["p_star"]), [Bounded(**b) for b in a["ci95"]]))
        row["Marks"] = " ".join(marks)
        rows.append(row)
    return pd.DataFrame(rows), notes, metrics


# -- adversarial results --------------------------------------------------------------------------------------------
def _curve_cell(e: dict, r: dict | None, key: str, i: int) -> str:
    """Mean over models and trials of a curve metric at flip budget index ``i``, with its 95% CI."""
    return MISSING if r is None else summary_cell(_RERR, curve_summary(e, r, key, i))


def adversarial_table(entries: list[dict], suite: Suite):
    """The adversarial table of one suite as a DataFrame of strings (None when no entry has such results)."""
    import pandas as pd

    flips, budgets, others = adversarial_attacks(entries, suite)
    ranked = adversarial_ranked(entries, suite)
    if not ranked:
        return None
    sweep = sorted({n for e in entries for r in [result_of(e, flips)] if r and r.get("curve")
                    for n in r["curve"]["flips"]}) if flips else []
    mem = _E["memory_overhead"]
    det = _R["detection"]
    show_mem = _shown(mem, entries, [e.get("memory_overhead", 0.0) for e in entries])
    detecting = [a for a in ([flips] if flips else []) + list(budgets) + list(others)
                 if any((result_of(e, a) or {}).get("detection") is not None for e in entries)]
    rows = []
    for fr, br, e in ranked:
        row = {"Rank": MISSING if fr is None else str(fr), _E["name"].title: entry_link(e),
               _E["defense"].title: md_code(e["defense"]), "Models": str(len(e["train_seeds"])),
               _E["clean_err"].title: format_number("pct", e["clean_err"])}
        if show_mem:
            row[mem.title] = format_number(mem.fmt, e.get("memory_overhead", 0.0))
        r = result_of(e, flips) if flips else None
        for n in sweep:
            i = r["curve"]["flips"].index(n) if r is not None and n in r["curve"]["flips"] else None
            row[f"Err % {n} flips"] = MISSING if i is None else _curve_cell(e, r, "err", i)
        if flips:
            row["Flips to chance"] = MISSING if r is None else format_flips(entry_flips(r))
        for a in detecting:
            d = result_of(e, a)
            row[f"Detected % {md_code(a)}"] = MISSING if d is None else format_number(det.fmt, d.get("detection"))
        for a in budgets:
            row[f"RErr % {md_code(a)}"] = _cell(_RERR, result_of(e, a), "rerr")
        for a in others:    # final value of the attack's own metric (e.g. T-BFA's ASR) and its flips to target
            o = result_of(e, a)
            metric = o["target"]["metric"] if o is not None and o.get("target") else "err"
            last = len(o["curve"]["flips"]) - 1 if o is not None else 0
            row[f"{metric.upper() if metric == 'asr' else 'Err'} % {md_code(a)}"] = _curve_cell(e, o, metric, last)
            row[f"Flips to target {md_code(a)}"] = MISSING if o is None else format_flips(entry_flips(o))
        if budgets:
            row[f"Rank {md_code(budgets[-1])}"] = MISSING if br is None else str(br)
        rows.append(row)
    return pd.DataFrame(rows)


def _adversarial_section(suite: Suite, entries: list[dict], plot_link: str | None) -> list[str]:
    df = adversarial_table(entries, suite)
    if df is None:
        return []
    flips, budgets, others = adversarial_attacks(entries, suite)
    targets = sorted({100 * r["target"]["value"] for e in entries for r in [result_of(e, flips)] if r and
                      r.get("target")}) if flips else []
    out = ["### Adversarial bit flips", ""]
    words = []
    if flips:
        chance = " / ".join(f"{t:.2f}%" for t in targets)
        words.append(f"{md_code(flips)}: the progressive bit search (BFA) on the attacker split, one curve per trial "
                     "(each trial its own attacker batch), run until the test error reaches the target or the budget "
                     "is spent; Err n flips: test error once the search has flipped at most n bits, mean [95% CI] "
                     "over models and trials; Flips to chance: first flip count at which the test error reached "
                     f"{chance}, median [min, max] over all trials, (k/T) trials that reached it within the budget; "
                     "'> n': not within the budget n (right-censored). Ranked by robustness: fewer trials reaching "
                     "chance within the budget first, then more flips")
    if budgets:
        words.append("RErr budget_e{eps}: robust test error under the budgeted attack (at most eps flipped bits, "
                     f"one per weight), mean [95% CI]; Rank {md_code(budgets[-1])}: rank groups by that column "
                     "(lower is better; ties where the paired difference is not significant)")
    if any(e.get("memory_overhead") for e in entries):
        words.append("Mem +%: check bits per data bit of a protected memory; Detected: share of the attack's flipped "
                     "bits that fell into groups whose checksum mismatched (they are then recovered)")
    if others:
        words.append("other attacks: their metric (ASR: attack success rate of a targeted attack) after the whole "
                     "search and their flips to target, as above")
    out += ["; ".join(words) + ". Errors in %.", ""]
    aligns = ["right", "left", "left"] + ["right"] * (len(df.columns) - 3)
    out += [df.to_markdown(index=False, disable_numparse=True, colalign=aligns), ""]
    if plot_link:
        out += [f"![Test error against bit flips, suite {markdown_text(suite.name)}]({plot_link})", ""]
    return out


def _protocol_line(suite: Suite) -> str:
    p = suite.protocol
    split = f"`{p['eval_split']}`" if p["eval_split"] else "the dataset's evaluation split"
    seeds = f"seeds {suite.base_seed}..{suite.base_seed + suite.patterns - 1}"
    rates = ", ".join(format_rate(r) for r in suite.rates) or "none"
    head = format_rate(suite.headline_rate) if suite.headline_rate is not None else "–"
    return (f"Protocol: dataset `{p['dataset']}`, evaluation images {split}, {p['bits']} bit (unless "
            f"the defense sets its own width: column Bits), {p['patterns']} "
            f"random bit error patterns per rate ({seeds}), rates {rates}. Ranked by RErr at p = {head} in rank "
            "groups: an entry's rank is 1 + the number of entries significantly better (the 95% CI of the paired "
            "difference on the same chips excludes 0); entries whose difference includes 0 share a rank (not "
            "separable).")


def _suite_section(suite: Suite, entries: list[dict], plot_link: str | None = None,
                   flips_link: str | None = None) -> list[str]:
    out = [f"## {markdown_text(suite.name)}", ""]
    if suite.description:
        out += [markdown_text(suite.description), ""]
    out += [_protocol_line(suite), ""]
    if not entries:
        out += ["No entries yet.", ""]
        return out
    df, notes, metrics = suite_table(entries, suite)
    aligns = ["right", "left", "left", "left", "right", "right"] + ["right"] * (len(df.columns) - 7) + ["left"]
    out += [df.to_markdown(index=False, disable_numparse=True, colalign=aligns), ""]
    extra = "".join(f"{markdown_text(f.title)}: {markdown_text(f.doc)}, at p = {format_rate(suite.headline_rate)}; "
                    for f in metrics.values())
    out += ["Errors in %, mean [95% CI] over models and chips (a bootstrap over both). Models: trained models of the "
            "row (training seeds). Clean Err: test error of the clean quantized model, mean over models; RErr p: "
            "robust test error (wrong on the clean OR the bit-error-perturbed model) at bit error rate p; "
            + ("Mem +%: check bits of a protected memory (`+secded`, `+radar`) per data bit; Decode ms: its decode "
               "time per pattern, mean over the rates; " if any(e.get("memory_overhead") for e in entries) else "")
            + extra + (f"{TOLERABLE_FIELD.title} +b points: the highest bit error rate p* whose mean RErr stays "
                       "within b points of the row's own clean error (over normal: of the normal row's), with its "
                       "95% interval (docs/energy.md); " if any(e.get("tolerable") for e in entries) else "")
            + f"{MISSING}: not available.", ""]
    papers = sorted({(e.get("citation") or "", e.get("link") or "") for e in entries if e["reported_by"] == "paper"})
    if papers:
        cites = "; ".join(f"{markdown_text(c)} ({safe_link(l) or markdown_text(l)})" if l else markdown_text(c)
                          for c, l in papers)
        out += [f"{PAPER_MARK} Reported by the paper, not reproduced by this benchmark: {cites}.", ""]
    for i, text in enumerate(notes, 1):
        text = markdown_text(text)
        out += [f"[{i}] {text if text.endswith('.') else text + '.'}", ""]
    if plot_link:
        out += [f"![RErr against bit error rate, suite {markdown_text(suite.name)}]({plot_link})", ""]
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
           "this file with `python -m benchmark leaderboard`. `python -m benchmark run --entry "
           "leaderboard/entries/<suite>/<name>.json` re-evaluates a row on the checkpoints it names.", ""]
    if not data:
        out += ["No entries yet.", ""]
    for name, (suite, entries) in data.items():
        links = plot_links or {}
        out += _suite_section(suite, entries, links.get(name), links.get(f"{name}-flips"))
    return "\n".join(out).rstrip("\n") + "\n"


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
