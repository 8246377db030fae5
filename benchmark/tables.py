"""Result tables: one row per cell (defense x attack, over its trained models) for ``run``; defenses x rates for
``suite``.

Every cell is formatted by the one cell formatter of the core (:func:`bitbench.configs.schema.summary_cell`) from
the cell's statistics (:class:`~bitbench.configs.cells.Cell`): ``mean [lo, hi]`` with the 95% confidence interval
over models and chips by default, ``mean ± sd`` (chip spread) with ``--std``, which also adds the model and chip
spread columns. Columns come from the declared fields (titles, number formats, when a column is shown, when a value
is undefined: "–"), the plug-in metrics of the records included. Errors are stored as fractions, shown in percent.

Adversarial results with curves (BFA, T-BFA, the budgeted attack) have their own table: the metric after each flip
budget of the sweep, flips to the target (median [min, max] over all trials; ``> n`` for trials that did not reach it
within the budget n: right-censored), flips used and why the searches stopped. Protected defenses add their costs
(:func:`cost_cells`). The suite table is followed by the orderings per rate: ``<`` where the paired difference of
neighbours (same chips) is significant, ``≈`` where its 95% CI includes 0.
"""

from __future__ import annotations

import io
import json

import pandas as pd

from bitbench.configs.cells import Cell, group_cells
from bitbench.configs.record import CURVE_POINT_FIELDS, RECORD_FIELDS, ResultRecord, protection_summary
from bitbench.configs.schema import MISSING, format_number, summary_cell
from bitbench.configs.stats import adjacent_orderings, derive_seed, format_flips, summarize_cell

__all__ = ["FORMATS", "run_table", "suite_table", "adversarial_tables", "suite_adversarial_table", "run_tables",
           "suite_tables", "render", "cost_cells", "orderings", "STYLES"]

FORMATS = ("table", "markdown", "csv", "json")
STYLES = ("ci", "sd")
_F = {f.name: f for f in RECORD_FIELDS}
_ERR, _RERR, _NONFINITE = _F["err"], _F["rerr"], _F["nonfinite"]
_CLEAN_TITLE = "Clean " + _ERR.title
_POINT = {f.name: f for f in CURVE_POINT_FIELDS}


def _spread_cells(row: dict, c: Cell, name: str, title: str) -> None:
    s = c.summary(name)
    f = _F.get(name) or next(x for x in c.metric_fields() if x.name == name)
    row[f"{title} model sd"] = format_number(f.fmt, s["model_sd"])
    row[f"{title} chip sd"] = format_number(f.fmt, s["chip_sd"])


def _shown(field, cells) -> bool:
    if field.show == "always":
        return True
    return any(v for c in cells for row in c.matrix(field.name) for v in row) or any(
        c.first.clean_value(field.name) for c in cells if field.clean)


def cost_cells(c: Cell, detail: bool = True) -> dict:
    """The costs of a cell's protection as table cells (``–`` for an unprotected one): memory overhead (check bits
    / data bits), decode time per pattern (and as % of loading and evaluating one pattern); with ``detail`` the
    decoder's per-pattern counts: data bits still wrong, units the stages flagged, and the detection ratio of
    checksum stages."""
    prot = c.protection
    row = {_F["memory_overhead"].title: format_number("pct", c.first.memory_overhead) if prot else MISSING,
           _F["decode_ms"].title: (f"{sum(c.model_values('decode_ms')) / c.n_models:.2f} "
                                   f"(+{100 * sum(c.model_values('time_overhead')) / c.n_models:.0f}%)")
           if prot else MISSING}
    if not detail:
        return row
    sums = [protection_summary(r) for r in c.records] if prot else []
    stages = prot["stages"] if prot else []
    flag_keys = [f"{s['name']}.{s['flagged']}" for s in stages if s.get("flagged")]
    ratio_keys = [f"{s['name']}.{k}" for s in stages for k in (s.get("ratios") or {})]
    mean = lambda key: sum(s.get(key) or 0 for s in sums) / len(sums)  # noqa: E731
    row["Residual bits"] = f"{mean('residual'):.1f}" if prot else MISSING
    row["Flagged"] = f"{sum(mean(k) for k in flag_keys):.1f}" if flag_keys else MISSING
    dets = [s.get(k) for s in sums for k in ratio_keys]
    row["Detected %"] = MISSING if not dets or any(d is None for d in dets) else \
        format_number("pct1", sum(dets) / len(dets))
    failed = sum(s["failed"] for s in sums)
    if failed:
        row["Flagged"] += f" ({failed} failed)"
    return row


def _time(c: Cell) -> str:
    return "cached" if c.cached else f"{sum(r.timings.get('total', 0.0) for r in c.records):.1f}"


def run_table(records: list[ResultRecord], style: str = "ci", outcomes: bool = False) -> pd.DataFrame:
    """One row per cell of random-error (and other curve-less) records; ``outcomes``: also the outcome classes
    (masked / SDC / DUE examples per pattern)."""
    cells = group_cells(records)
    metrics = {f.name: f for c in cells for f in c.metric_fields()}
    if outcomes:
        metrics = {**{n: _F[n] for n in ("masked", "sdc", "due")}, **metrics}
    show_nf, costs = _shown(_NONFINITE, cells), any(c.protection for c in cells)
    rows = []
    for c in cells:
        row = {"defense": c.defense, "bits": c.bits, "attack": c.attack, "models": c.n_models,
               "patterns": c.n_patterns, _CLEAN_TITLE: summary_cell(_ERR, c.clean_summary("err"), style=style),
               _RERR.title: summary_cell(_RERR, c.summary("rerr"), style=style)}
        if style == "sd":
            _spread_cells(row, c, "rerr", _RERR.title)
        for name, f in metrics.items():
            have = name in c.first.metrics or name in _F
            if f.clean:
                row[f"Clean {f.title}"] = summary_cell(f, c.clean_summary(name), style=style) if have else MISSING
            row[f.title] = summary_cell(f, c.summary(name), style=style) if have else MISSING
        if show_nf:
            row[_NONFINITE.title] = summary_cell(_NONFINITE, None, values=c.matrix("nonfinite")) + (
                f" (clean: {sum(c.clean('nonfinite'))})" if any(c.clean("nonfinite")) else "")
        if costs:
            row.update(cost_cells(c))
        row["time s"] = _time(c)
        rows.append(row)
    return pd.DataFrame(rows)


def _attack_col(c: Cell) -> str:
    if c.rate is not None and c.attack_name == "random":
        return f"p={100 * c.rate:g}%"
    return c.attack


def orderings(named: dict, *, lower_is_better: bool = True, seed_key: str = "") -> str:
    """``'a ≈ b < c'``: the cells ``{name: models x chips matrix}`` sorted by mean; ``<`` where the paired
    difference of neighbours (same chips, 95% CI of a bootstrap over models and chips) excludes 0, ``≈`` where it
    includes 0 (not separable)."""
    pairs = adjacent_orderings([{"name": n, "values": m} for n, m in named.items()], lower_is_better=lower_is_better,
                               seed=derive_seed(f"orderings|{seed_key}"))
    if not pairs:
        return " ".join(named)
    out = [pairs[0]["a"]]
    for p in pairs:
        out += ["<" if p["significant"] else "≈", p["b"]]
    return " ".join(out)


def suite_table(records: list[ResultRecord], style: str = "ci", with_orderings: bool = True):
    """Rows = defenses, columns = clean error and RErr per rate or attack (the paper's figure). Returns the table
    and, with ``with_orderings``, a second table: per column, the defenses ordered by RErr with the significant
    steps marked."""
    cells = [c for c in group_cells(records) if not c.has_curve]
    defenses, cols, by = [], [], {}
    for c in cells:
        col = _attack_col(c)
        defenses += [c.defense] if c.defense not in defenses else []
        cols += [col] if col not in cols else []
        by[(c.defense, col)] = c
    costs = any(c.protection for c in cells)
    rows = []
    for d in defenses:
        first = next(c for (dd, _), c in by.items() if dd == d)
        row = {"defense": d, "models": str(first.n_models),
               _CLEAN_TITLE: summary_cell(_ERR, first.clean_summary("err"), style="mean")}
        if costs:
            row[_F["memory_overhead"].title] = cost_cells(first, detail=False)[_F["memory_overhead"].title]
        for col in cols:
            c = by.get((d, col))
            row[col] = MISSING if c is None else summary_cell(_RERR, c.summary("rerr"), style=style)
        rows.append(row)
    table = pd.DataFrame(rows)
    if not with_orderings or len(defenses) < 2:
        return table
    order_rows = []
    for col in cols:
        named = {d: by[(d, col)].matrix("rerr") for d in defenses if (d, col) in by}
        if len(named) > 1:
            order_rows.append({"RErr %": col, "defenses from lowest RErr (< significant, ≈ not separable)":
                               orderings(named, seed_key=col)})
    return [table, pd.DataFrame(order_rows)] if order_rows else table


# -- adversarial results --------------------------------------------------------------------------------------------
def _metric(c: Cell) -> str:
    return c.target["metric"] if c.target else "err"


def _curve_cell(c: Cell, n: int, key: str, style: str) -> str:
    cm = c.curve_matrix(key)
    if cm is None or n not in cm[0]:
        return MISSING
    flips, vals = cm
    mat = [[t for t in m] for m in vals[flips.index(n)]]
    s = summary_from_matrix(mat, f"{c.identity()}|curve.{key}@{n}")
    return summary_cell(_POINT[key], s, style=style)


def summary_from_matrix(mat: list, identity: str) -> dict:
    s = summarize_cell(mat, seed=derive_seed(identity))
    return {"mean": s.mean, "model_sd": s.model_sd, "chip_sd": s.chip_sd, "ci95": list(s.ci95)}


def _flips_cell(c: Cell) -> str:
    s = c.flips_summary()
    return MISSING if s is None else format_flips(s)


def _target_cell(c: Cell) -> str:
    if c.target is None:
        return MISSING
    f = _POINT[c.target["metric"]]
    return f"{f.title.removesuffix(' %')} >= {format_number('pct', c.target['value'])}%"


def _stops(c: Cell) -> str:
    counts: dict = {}
    for r in c.records:
        for p in r.patterns:
            counts[p.stop_reason] = counts.get(p.stop_reason, 0) + 1
    total = sum(counts.values())
    return ", ".join(f"{k} {v}" if total > 1 else str(k) for k, v in counts.items())


def _sweep(cells: list[Cell]) -> list[int]:
    return sorted({q["flips"] for c in cells for r in c.records for p in r.patterns for q in p.curve})


def adversarial_tables(records: list[ResultRecord], style: str = "ci") -> list[pd.DataFrame]:
    """One table per curve metric (Err for BFA and the budgeted attack, ASR for T-BFA) of the cells with curves: a
    row per cell, the metric after each flip budget (over models and trials), flips to the target."""
    out = []
    cells = [c for c in group_cells(records) if c.has_curve]
    for metric in ("err", "asr"):
        cs = [c for c in cells if _metric(c) == metric]
        if not cs:
            continue
        title = _POINT[metric].title.removesuffix(" %")
        sweep = _sweep(cs)
        extra = [k for k in ("asr_all", "other_err") if metric == "asr"
                 and any(c.curve_matrix(k) is not None for c in cs)]
        rows = []
        for c in cs:
            row = {"defense": c.defense, "bits": c.bits, "attack": c.attack, "models": c.n_models,
                   "trials": c.n_patterns, _CLEAN_TITLE: summary_cell(_ERR, c.clean_summary("err"), style="mean")}
            for n in sweep:
                row[f"{title} % n={n}"] = _curve_cell(c, n, metric, style)
            last = c.first.patterns[0].curve[-1]["flips"]
            for k in extra:   # undefined for attacks without it (an all-to-one T-BFA has no 'other' classes)
                row[_POINT[k].title] = _curve_cell(c, last, k, style)
            row["target"] = _target_cell(c)
            row["flips to target"] = _flips_cell(c)
            used = [p.flips_used for r in c.records for p in r.patterns]
            row["flips used"] = f"{sum(used) / len(used):g}"
            row["stop"] = _stops(c)
            row[_RERR.title] = summary_cell(_RERR, c.summary("rerr"), style=style)
            if any(x.protection for x in cs):
                row.update(cost_cells(c))
            row["time s"] = _time(c)
            rows.append(row)
        out.append(pd.DataFrame(rows))
    return out


def suite_adversarial_table(records: list[ResultRecord], style: str = "ci") -> pd.DataFrame | None:
    """Rows = defenses; per attack with a target (BFA): its metric after each flip budget and the flips to the
    target; per attack without one (the budgeted attack): RErr under its budget. None without such cells."""
    cells = [c for c in group_cells(records) if c.has_curve]
    if not cells:
        return None
    defenses = list(dict.fromkeys(c.defense for c in cells))
    attacks = list(dict.fromkeys(c.attack for c in cells))
    curved = [a for a in attacks if any(c.attack == a and c.target is not None for c in cells)]
    by = {(c.defense, c.attack): c for c in cells}
    costs = any(c.protection for c in cells)
    rows = []
    for d in defenses:
        row = {"defense": d}
        if costs:
            row[_F["memory_overhead"].title] = cost_cells(next(c for c in cells if c.defense == d),
                                                          detail=False)[_F["memory_overhead"].title]
        for a in attacks:
            c = by.get((d, a))
            if a in curved:
                lab = "" if len(curved) == 1 else f"{a} "
                mets = [x for x in cells if x.attack == a]
                metric = _metric(mets[0])
                title = _POINT[metric].title.removesuffix(" %")
                for n in _sweep(mets):
                    row[f"{lab}{title}@{n}"] = MISSING if c is None else _curve_cell(c, n, metric, style)
                row[f"{lab}flips to target"] = MISSING if c is None else _flips_cell(c)
            else:
                row[f"RErr {a}"] = MISSING if c is None else summary_cell(_RERR, c.summary("rerr"), style=style)
            if any(x.attack == a and x.protection and any((s.get("ratios") for s in x.protection["stages"]))
                   for x in cells):
                row[f"{a} detected %"] = MISSING if c is None else cost_cells(c)["Detected %"]
        rows.append(row)
    return pd.DataFrame(rows)


def run_tables(records: list[ResultRecord], style: str = "ci", outcomes: bool = False) -> list[pd.DataFrame]:
    """``run``'s output: the random-error table (if any such records) and the adversarial tables."""
    plain = [r for r in records if not r.has_curve]
    return ([run_table(plain, style, outcomes)] if plain else []) + adversarial_tables(records, style)


def suite_tables(records: list[ResultRecord], style: str = "ci") -> list[pd.DataFrame]:
    """``suite``'s output: defenses x rates (with the orderings), then defenses x adversarial attacks."""
    adv = suite_adversarial_table(records, style)
    plain = [r for r in records if not r.has_curve]
    out = []
    if plain:
        t = suite_table(plain, style)
        out += t if isinstance(t, list) else [t]
    return out + ([adv] if adv is not None else [])


def cells_json(records: list[ResultRecord]) -> list[dict]:
    """``run --format json``: one object per cell: its statistics (``train_seeds``, ``per_model_rerr``, ``rerr``
    with ``ci95``, the plug-in metrics') and its records (the files' JSON)."""
    out = []
    for c in group_cells(records):
        obj = {"defense": c.defense, "attack": c.attack, "train_seeds": c.train_seeds,
               "per_model_clean_err": c.clean("err"), "per_model_rerr": c.matrix("rerr"),
               "rerr": c.summary("rerr"), "clean_err": c.clean_summary("err"),
               "metrics": {f.name: c.summary(f.name) for f in c.metric_fields() if f.summary},
               "records": [r.to_json() for r in c.records]}
        out.append(obj)
    return out


def render(df, fmt: str, records: list | None = None) -> str:
    """``df`` (a DataFrame or a list of them, separated by a blank line) as text; ``json`` prints the cells (their
    statistics and their records' JSON) of ``records``, or ``records`` themselves when they are plain objects."""
    if isinstance(df, (list, tuple)) and fmt != "json":
        return "\n\n".join(render(d, fmt) for d in df)
    if fmt == "json":
        recs = list(records or [])
        if recs and all(isinstance(r, ResultRecord) for r in recs):
            return json.dumps(cells_json(recs), indent=2)
        return json.dumps(recs, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        df.to_csv(buf, index=False)
        return buf.getvalue().rstrip("\n")
    if fmt == "markdown":
        return df.to_markdown(index=False, tablefmt="github", disable_numparse=True)
    if fmt == "table":
        return df.to_markdown(index=False, tablefmt="simple", disable_numparse=True)
    raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")

