"""Result tables: one row per (defense, attack) for ``run``; defenses x rates for ``suite``.

Errors are stored as fractions and shown in percent.
"""

from __future__ import annotations

import io
import json

import pandas as pd

from bitbench.configs.record import ResultRecord

__all__ = ["FORMATS", "run_table", "suite_table", "render"]

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


def run_table(records: list[ResultRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        rows.append({"defense": r.defense, "bits": r.bits, "attack": r.attack,
                     "patterns": r.n_patterns, "clean Err %": _pct(r.clean_err),
                     "RErr % mean ± std [min, max]": _rerr_cell(r),
                     "time s": "cached" if r.cached else f"{r.timings['total']:.1f}"})
    return pd.DataFrame(rows)


def _attack_col(r: ResultRecord) -> str:
    if r.rate is not None and r.attack_name == "random":
        return f"p={100 * r.rate:g}%"
    return r.attack


def suite_table(records: list[ResultRecord], show_std: bool = False) -> pd.DataFrame:
    """Rows = defenses, columns = clean Err and RErr (mean %) per rate or attack, like the paper's figure."""
    defenses, cols, cells, clean = [], [], {}, {}
    for r in records:
        d, c = r.defense, _attack_col(r)
        if d not in defenses:
            defenses.append(d)
        if c not in cols:
            cols.append(c)
        m = r.rerr.mean
        cells[(d, c)] = "–" if m is None else (f"{100 * m:.2f} ± {100 * r.rerr.std:.2f}" if show_std
                                               else f"{100 * m:.2f}")
        clean[d] = r.clean_err
    rows = []
    for d in defenses:
        row = {"defense": d, "clean Err %": _pct(clean.get(d))}
        for c in cols:
            row[c] = cells.get((d, c), "–")
        rows.append(row)
    return pd.DataFrame(rows)


def render(df: pd.DataFrame, fmt: str, records: list | None = None) -> str:
    """``df`` as text; ``json`` prints the records themselves (ResultRecords as their files' JSON)."""
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
