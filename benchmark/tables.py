"""Result tables: one row per (defense, attack) for ``run``; defenses x rates for ``suite``.

Adversarial results with curves (BFA, T-BFA, the budgeted attack) have their own shape: one row per (defense,
attack) with the metric after each flip budget of the sweep as mean ± std over trials, flips to the target as
median [min, max] over trials (``(k/T)`` when only k trials reached it), the flips used and why the searches
stopped. Errors are stored as fractions and shown in percent.

Protected defenses (``rquant+secded``, ``clip+radar``): wherever a table holds one, every row gains its costs and
what the decoder saw (:func:`cost_cells`): memory overhead (check bits / data bits, %), decode time per pattern
(ms, and as % of the time to load and evaluate one pattern), and per pattern the mean of data bits still wrong
after decoding, words or groups flagged, and for checksums the share of flipped bits inside flagged groups.
"""

from __future__ import annotations

import io
import json

import pandas as pd

from bitbench.configs.record import ResultRecord, Summary, flips_summary, format_flips, protection_summary

__all__ = ["FORMATS", "run_table", "suite_table", "adversarial_tables", "suite_adversarial_table", "run_tables",
           "suite_tables", "render", "cost_cells"]

FORMATS = ("table", "markdown", "csv", "json")


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _rerr_cell(rec: ResultRecord) -> str:
    r = rec.rerr
    if r.mean is None:
        return "–"
    if rec.n_patterns <= 1:
        return f"{100 * r.mean:.2f}"
    return f"{100 * r.mean:.2f} ± {100 * r.std:.2f} [{100 * r.min:.2f}, {100 * r.max:.2f}]"


def cost_cells(r: ResultRecord, detail: bool = True) -> dict:
    """The costs of a record's protection as table cells (``–`` for an unprotected one); ``detail``: also the
    decoder's per-pattern counts."""
    s = protection_summary(r)
    row = {"mem +%": f"{100 * r.memory_overhead:.2f}" if s is not None else "–",
           "decode ms": f"{r.decode_ms:.2f} (+{100 * r.time_overhead:.0f}%)" if s is not None else "–"}
    if not detail:
        return row
    flagged = None if s is None else sum(v for k, v in s.items() if k.endswith((".detected", ".flagged")))
    det = _detection(r)
    row["residual bits"] = "–" if s is None else f"{s['residual']:.1f}"
    row["flagged"] = "–" if flagged is None else f"{flagged:.1f}"
    row["detected %"] = "–" if det is None else f"{100 * det:.1f}"
    if s is not None and s["failed"]:
        row["flagged"] += f" ({s['failed']} failed)"
    return row


def _detection(r: ResultRecord) -> float | None:
    """Share of the flipped data bits that fell into flagged checksum groups (None: no checksum stage)."""
    s = protection_summary(r) or {}
    return next((v for k, v in s.items() if k.endswith(".detection")), None)


def _protected(records) -> bool:
    return any(r.protection is not None for r in records)


def _nonfinite_cell(r: ResultRecord) -> str:
    """Patterns whose logits held NaN or inf for some input (those inputs count as errors), of all patterns; a
    clean memory with such inputs is marked too. ``–``: not measured."""
    nf = r.nonfinite
    if nf is None:
        return "–"
    return f"{nf['patterns']}/{r.n_patterns}" + (f" (clean: {nf['clean']})" if nf["clean"] else "")


def _any_nonfinite(records) -> bool:
    return any(r.nonfinite is not None and (r.nonfinite["patterns"] or r.nonfinite["clean"]) for r in records)


def run_table(records: list[ResultRecord]) -> pd.DataFrame:
    rows = []
    costs, nonfinite = _protected(records), _any_nonfinite(records)
    for r in records:
        row = {"defense": r.defense, "bits": r.bits, "attack": r.attack,
               "patterns": r.n_patterns, "clean Err %": _pct(r.clean_err),
               "RErr % mean ± std [min, max]": _rerr_cell(r)}
        if nonfinite:
            row["non-finite patterns"] = _nonfinite_cell(r)
        if costs:
            row.update(cost_cells(r))
        row["time s"] = "cached" if r.cached else f"{r.timings['total']:.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _attack_col(r: ResultRecord) -> str:
    if r.rate is not None and r.attack_name == "random":
        return f"p={100 * r.rate:g}%"
    return r.attack


def suite_table(records: list[ResultRecord], show_std: bool = False) -> pd.DataFrame:
    """Rows = defenses, columns = clean Err and RErr (mean %) per rate or attack, like the paper's figure."""
    defenses, cols, cells, clean, mem = [], [], {}, {}, {}
    for r in records:
        if r.has_curve:
            continue
        d, c = r.defense, _attack_col(r)
        if d not in defenses:
            defenses.append(d)
        if c not in cols:
            cols.append(c)
        m = r.rerr.mean
        cells[(d, c)] = "–" if m is None else (f"{100 * m:.2f} ± {100 * r.rerr.std:.2f}" if show_std
                                               else f"{100 * m:.2f}")
        clean[d] = r.clean_err
        mem[d] = cost_cells(r, detail=False)["mem +%"]
    rows = []
    costs = _protected(records)
    for d in defenses:
        row = {"defense": d, "clean Err %": _pct(clean.get(d))}
        if costs:
            row["mem +%"] = mem[d]
        for c in cols:
            row[c] = cells.get((d, c), "–")
        rows.append(row)
    return pd.DataFrame(rows)


# -- adversarial results --------------------------------------------------------------------------------------------
_METRIC_NAME = {"err": "Err", "asr": "ASR"}


def _metric(r: ResultRecord) -> str:
    return r.target["metric"] if r.target else "err"


def _mean_std(values: list[float]) -> str:
    s = Summary.of(values)
    if s.mean is None:
        return "–"
    return f"{100 * s.mean:.2f}" if len(values) == 1 else f"{100 * s.mean:.2f} ± {100 * s.std:.2f}"


def _at(r: ResultRecord, n: int, key: str) -> list[float] | None:
    """The trials' ``key`` in the curve point of budget n (None: n is not in the record's sweep)."""
    vals = []
    for p in r.patterns:
        pt = next((q for q in p.curve if q["flips"] == n), None)
        if pt is None or key not in pt:
            return None
        vals.append(pt[key])
    return vals


def _sweep(records: list[ResultRecord]) -> list[int]:
    return sorted({q["flips"] for r in records for p in r.patterns for q in p.curve})


def _flips_cell(r: ResultRecord) -> str:
    if r.target is None:
        return "–"
    return format_flips(flips_summary([p.flips_to_target for p in r.patterns]))


def _target_cell(r: ResultRecord) -> str:
    if r.target is None:
        return "–"
    return f"{_METRIC_NAME[r.target['metric']]} >= {100 * r.target['value']:.2f}%"


def _stops(r: ResultRecord) -> str:
    counts: dict = {}
    for p in r.patterns:
        counts[p.stop_reason] = counts.get(p.stop_reason, 0) + 1
    return ", ".join(f"{k} {v}" if len(r.patterns) > 1 else str(k) for k, v in counts.items())


def adversarial_tables(records: list[ResultRecord]) -> list[pd.DataFrame]:
    """One table per metric (Err for BFA and the budgeted attack, ASR for T-BFA) of the records with curves: a row
    per (defense, attack), the metric after each flip budget (mean ± std over trials), flips to the target."""
    out = []
    for metric in ("err", "asr"):
        recs = [r for r in records if r.has_curve and _metric(r) == metric]
        if not recs:
            continue
        name = _METRIC_NAME[metric]
        sweep = _sweep(recs)
        rows = []
        for r in recs:
            row = {"defense": r.defense, "bits": r.bits, "attack": r.attack, "trials": r.n_patterns,
                   "clean Err %": _pct(r.clean_err)}
            for n in sweep:
                v = _at(r, n, metric)
                row[f"{name} % n={n}"] = "–" if v is None else _mean_std(v)
            if metric == "asr" and any(_at(x, sweep[-1], "other_err") for x in recs):
                row["other Err %"] = _mean_std([p.curve[-1].get("other_err", 0.0) for p in r.patterns])
            row["target"] = _target_cell(r)
            row["flips to target"] = _flips_cell(r)
            row["flips used"] = f"{sum(p.flips_used for p in r.patterns) / r.n_patterns:g}"
            row["stop"] = _stops(r)
            row["RErr %"] = _mean_std(r.per_pattern_rerr)
            if _protected(recs):
                row.update(cost_cells(r))
            row["time s"] = "cached" if r.cached else f"{r.timings['total']:.1f}"
            rows.append(row)
        out.append(pd.DataFrame(rows))
    return out


def suite_adversarial_table(records: list[ResultRecord], show_std: bool = False) -> pd.DataFrame | None:
    """Rows = defenses; per attack with a target (BFA): its metric after each flip budget and the flips to the
    target; per attack without one (the budgeted attack): RErr under its budget. None without such records."""
    recs = [r for r in records if r.has_curve]
    if not recs:
        return None
    defenses = list(dict.fromkeys(r.defense for r in recs))
    attacks = list(dict.fromkeys(r.attack for r in recs))
    curved = [a for a in attacks if any(r.attack == a and r.target is not None for r in recs)]
    by = {(r.defense, r.attack): r for r in recs}

    def cell(vals):
        if vals is None:
            return "–"
        s = Summary.of(vals)
        return f"{100 * s.mean:.2f} ± {100 * s.std:.2f}" if show_std else f"{100 * s.mean:.2f}"

    rows = []
    costs = _protected(recs)
    detecting = {r.attack for r in recs if _detection(r) is not None}
    for d in defenses:
        row = {"defense": d}
        if costs:
            row["mem +%"] = cost_cells(next(r for r in recs if r.defense == d), detail=False)["mem +%"]
        for a in attacks:
            r = by.get((d, a))
            if a in curved:
                lab = "" if len(curved) == 1 else f"{a} "
                mets = [x for x in recs if x.attack == a]
                name = _METRIC_NAME[_metric(mets[0])]
                for n in _sweep(mets):
                    row[f"{lab}{name}@{n}"] = cell(None if r is None else _at(r, n, _metric(r)))
                row[f"{lab}flips to target"] = "–" if r is None else _flips_cell(r)
            else:
                row[f"RErr {a}"] = "–" if r is None else cell(r.per_pattern_rerr)
            if a in detecting:
                det = None if r is None else _detection(r)
                row[f"{a} detected %"] = "–" if det is None else f"{100 * det:.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


def run_tables(records: list[ResultRecord]) -> list[pd.DataFrame]:
    """``run``'s output: the random-error table (if any such records) and the adversarial tables."""
    plain = [r for r in records if not r.has_curve]
    return ([run_table(plain)] if plain else []) + adversarial_tables(records)


def suite_tables(records: list[ResultRecord], show_std: bool = False) -> list[pd.DataFrame]:
    """``suite``'s output: defenses x rates (and plain attacks), then defenses x adversarial attacks."""
    adv = suite_adversarial_table(records, show_std)
    plain = [r for r in records if not r.has_curve]
    return ([suite_table(plain, show_std)] if plain else []) + ([adv] if adv is not None else [])


def render(df, fmt: str, records: list | None = None) -> str:
    """``df`` (a DataFrame or a list of them, separated by a blank line) as text; ``json`` prints the records
    themselves (ResultRecords as their files' JSON)."""
    if isinstance(df, (list, tuple)) and fmt != "json":
        return "\n\n".join(render(d, fmt) for d in df)
    if fmt == "json":
        return json.dumps([r.to_json() if isinstance(r, ResultRecord) else r for r in (records or [])], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        return buf.getvalue().rstrip("\n")
    if fmt == "markdown":
        return df.to_markdown(index=False, tablefmt="github", disable_numparse=True)
    if fmt == "table":
        return df.to_markdown(index=False, tablefmt="simple", disable_numparse=True)
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
