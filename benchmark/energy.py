"""The energy axis in a run: the tolerable-rate search on the harness, V_min and energy saved on a voltage profile,
the precision trade-off (docs/energy.md).

:func:`run_tolerable` runs the search of :func:`bitbench.configs.energy.tolerable_rate` for one defense: every rate
it asks for is the ordinary cell ``random_p{p}`` on the suite's chips (``Harness.run_cells``: records reused when
cached, written when new), so the evaluations are records like any other and a rate evaluated before costs
nothing. The analysis (p*, its interval, the matrices it came from) is written next to the records as
``<results>/<suite>/<model>/<defense>/<analysis spec>/tolerable.json`` (format ``bitbench.tolerable/1``), which
``submit`` takes with the records into the entry's ``tolerable`` field.
"""

from __future__ import annotations

import datetime as _dt
import os

from bitbench.configs.energy import (Bounded, analysis_json, check_analysis, energy_model,
                                     format_bounded, precision_tradeoff, tolerable_cell, tolerable_rate,
                                     tolerable_verdict, tolerable_voltage, voltage_energy)
from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import atomic_write_json, safe_name
from bitbench.configs.stats import derive_seed
from bitbench.configs.suite import stable_hash

from . import __version__

__all__ = ["TolerableRun", "run_tolerable", "is_analysis", "tolerable_table", "voltage_table", "precision_table",
           "orderings_line", "run_profiled_voltages", "profiled_table", "energy_note"]


def is_analysis(attack) -> bool:
    return getattr(attack, "kind", None) == "analysis"


class TolerableRun:
    """One defense's search: the analysis object (``analysis``), its :class:`TolerableRate` (``result``), the
    records of the evaluated rates (``records``), how many were computed now (``new``), and its file (``path``)."""

    def __init__(self, defense: str, bits: int, n_models: int, n_patterns: int, clean_err: float, result,
                 analysis: dict, records: list, new: int, path: str | None):
        self.defense, self.bits, self.n_models, self.n_patterns = defense, bits, n_models, n_patterns
        self.clean_err, self.result, self.analysis, self.records, self.new, self.path = \
            clean_err, result, analysis, records, new, path


def _reference_err(h, reference: str, log) -> float | None:
    if reference == "own":
        return None
    errs = [h.clean_error("normal", s) for s in h.seeds()]
    return sum(errs) / len(errs)


def run_tolerable(h, defense_spec: str, analysis_spec: str) -> TolerableRun:
    """The search for one defense on the harness ``h`` (module docstring)."""
    aspec, an = h.canonical_attack(analysis_spec)
    dspec = h.canonical_defense(defense_spec)
    cells: dict = {}
    new = [0]

    def records_at(p):
        if p not in cells:
            recs = h.run_cells(dspec, an.rate_spec(p))
            new[0] += 0 if all(r.cached for r in recs) else 1
            cells[p] = recs
        return cells[p]

    first = records_at(an.p_lo)
    clean = [r.clean_err for r in first]
    ref_err = _reference_err(h, an.reference, h.log)
    reference = clean if ref_err is None else ref_err
    grid = [r for r in h.suite.rates if an.p_lo <= r <= an.p_hi]
    r0 = first[0]
    seed = derive_seed(f"tolerable|{r0.suite}|{r0.model}|{r0.defense}|{aspec}")
    try:
        t = tolerable_rate(lambda p: [rec.per_pattern("rerr") for rec in records_at(p)], an.budget, reference,
                           an.p_lo, an.p_hi, seed=seed, rtol=an.rtol, grid=grid,
                           ci_rtol=an.ci_rtol or None, max_evals=an.max_evals)
    except ValueError as e:  # the evaluations broke the search's contract: a bug, not bad input
        raise RuntimeError(f"tolerable-rate search of {dspec}: {e}") from e
    mats = {p: [rec.per_pattern("rerr") for rec in cells[p]] for p in t.rates}
    recs = [r for p in t.rates for r in cells[p]]
    a = analysis_json(t, mats, suite=r0.suite, model=r0.model, defense=r0.defense, bits=r0.bits, spec=aspec,
                      train_seeds=[r.train_seed for r in first], pattern_seeds=r0.seeds, reference=an.reference,
                      config_hash=stable_hash(sorted(r.config_hash for r in recs)), version=__version__,
                      date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
    check_analysis(a)  # what a reader recomputes: the same numbers
    path = None
    if h.opt.write_results and h.dist.is_main:
        path = os.path.join(os.path.dirname(os.path.dirname(h.record_path(dspec, an.rate_spec(an.p_lo)))),
                            safe_name(aspec), "tolerable.json")
        atomic_write_json(path, a)
    return TolerableRun(r0.defense, r0.bits, len(first), r0.n_patterns, sum(clean) / len(clean), t, a, recs,
                        new[0], path)


# ------------------------------------------------------------------------------------------------------- tables
def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def tolerable_table(runs: list[TolerableRun]):
    """One row per (defense, analysis): clean error, reference, p* [95% CI], the verdict, evaluations (new)."""
    import pandas as pd

    from bitbench.configs.energy import TOLERABLE_FIELD

    rows = []
    for r in runs:
        a = r.analysis
        rows.append({"defense": r.defense, "bits": r.bits, "analysis": a["spec"], "models": r.n_models,
                     "patterns": r.n_patterns, "Clean Err %": _pct(r.clean_err),
                     "reference": ("own clean error" if a["reference"] == "own" else "normal's clean error")
                     + f" {_pct(a['reference_err'])}%",
                     f"{TOLERABLE_FIELD.title} [95% CI]": tolerable_cell(r.result.p_star, r.result.ci95),
                     "verdict": tolerable_verdict(r.result.p_star, a["budget"], a["reference"]),
                     "evaluations": f"{a['evaluations']} ({r.new} new)"})
    return pd.DataFrame(rows)


def orderings_line(runs: list[TolerableRun]) -> str | None:
    """``'p*: randbet > rquant ≈ normal'`` per analysis spec: ``>`` where the 95% intervals are disjoint, ``≈``
    (not separable) where they overlap (a conservative comparison of intervals, not a paired test)."""
    lines = []
    for spec in dict.fromkeys(r.analysis["spec"] for r in runs):
        rs = [r for r in runs if r.analysis["spec"] == spec]
        if len(rs) < 2:
            continue

        def key(r):
            b = r.result.p_star
            return b.value * (0.999 if b.rel == "<" else 1.001 if b.rel == ">" else 1.0)

        rs.sort(key=key, reverse=True)
        out = [rs[0].defense]
        for hi, lo in zip(rs, rs[1:]):
            a, b = lo.result.ci95[1], hi.result.ci95[0]   # the lower row's upper end, the higher row's lower end
            disjoint = a.value is not None and b.value is not None and (
                a.value < b.value or (a.value == b.value and "<" in a.rel + b.rel and ">" not in a.rel + b.rel))
            out += [">" if disjoint else "≈", lo.defense]
        lines.append(f"p* under {spec}, highest first (> the 95% intervals are disjoint, ≈ they overlap: not "
                     f"separable): {' '.join(out)}")
    return "\n".join(lines) or None


def voltage_table(runs: list[TolerableRun], profile):
    """Per row: V_min [95% CI] and the energy per access saved against the nominal voltage [95% CI]."""
    import pandas as pd

    rows = []
    for r in runs:
        ve = voltage_energy(profile, r.result)
        rows.append({"defense": r.defense, "bits": r.bits, "analysis": r.analysis["spec"],
                     "p*": format_bounded(r.result.p_star, lambda x: f"{100 * x:.3g}%"),
                     "V_min [95% CI]": _volt_cell(ve.v_min, ve.v_min_ci95),
                     "energy saved [95% CI]": _pct_cell(ve.saving, ve.saving_ci95),
                     "vs nominal": f"{profile.nominal_voltage:g} V"})
    return pd.DataFrame(rows)


def _volt_cell(v: Bounded, ci) -> str:
    f = lambda x: f"{x:.3f} V"  # noqa: E731
    return f"{format_bounded(v, f)} [{format_bounded(ci[0], f)}, {format_bounded(ci[1], f)}]"


def _pct_cell(v: Bounded, ci) -> str:
    f = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    return f"{format_bounded(v, f)} [{format_bounded(ci[0], f)}, {format_bounded(ci[1], f)}]"


def precision_table(runs: list[TolerableRun], profile, reference_bits: int = 8):
    """The precision trade-off: per row its memory bits, clean error, the RErr at the highest evaluated rate within
    the budget, p*, V_min and the weight memory's energy (bits / reference_bits x E(V_min) / E(V_nominal))
    relative to a ``reference_bits``-bit memory at the nominal voltage; saved = 1 - that."""
    import pandas as pd

    rows_in = [{"name": r.defense, "bits": r.bits, "tolerable": r.result, "clean_err": r.clean_err,
                "spec": r.analysis["spec"], "passing": _passing(r)} for r in runs]
    rows = []
    for d in precision_tradeoff(rows_in, profile, reference_bits=reference_bits):
        e, s = d["energy"], d["saving"]
        b = lambda j: Bounded(j["value"], j["rel"])  # noqa: E731
        p = d["passing"]
        rows.append({"defense": d["name"], "bits": d["bits"], "analysis": d["spec"],
                     "Clean Err %": _pct(d["clean_err"]),
                     "RErr % (rate)": "–" if p is None else f"{_pct(p[1])} (p={100 * p[0]:.3g}%)",
                     "p*": format_bounded(b(d["p_star"]), lambda x: f"{100 * x:.3g}%"),
                     "V_min": format_bounded(b(d["v_min"]), lambda x: f"{x:.3f} V"),
                     f"weight-memory energy vs {reference_bits}-bit at nominal [95% CI]":
                         _pct_cell(b(e), [b(x) for x in d["energy_ci95"]]),
                     "energy saved [95% CI]": _pct_cell(b(s), [b(x) for x in d["saving_ci95"]])})
    return pd.DataFrame(rows)


def _passing(r: TolerableRun):
    """(rate, mean RErr) of the highest evaluated rate below the first failing one (None: even p_lo fails)."""
    t = r.result
    out = None
    for p, m in zip(t.rates, t.mean_rerr):
        if m > t.threshold + 1e-12:
            break
        out = (p, m)
    return out


# ------------------------------------------------------------------------------------------ profiled error maps
def run_profiled_voltages(h, defense_spec: str, analysis_spec: str, profile) -> dict:
    """V_min measured on a folder of profiled error maps: at each voltage the defense's models are evaluated on that
    voltage's map (``errmap:file=<map>,tile=true`` with the analysis's patterns and base_seed, i.e. the suite's: its
    cells and flip directions; a stuck-at map gives the same pattern at every placement), then
    :func:`bitbench.configs.energy.tolerable_voltage` with the analysis's budget and reference. Returns
    ``{"defense", "bits", "v_min", "ci95", "voltages", "mean_rerr", "records"}``."""
    if profile.kind != "error_maps":
        raise UsageError("profiled evaluation needs a folder of error maps")
    aspec, an = h.canonical_attack(analysis_spec)
    dspec = h.canonical_defense(defense_spec)
    mats, recs = [], []
    for path in profile.maps:
        if "," in path:
            raise UsageError(f"--voltage-profile: the error map path {path!r} contains ',' (the spec separator); "
                             "rename it")
        cell = h.run_cells(dspec, f"errmap:file={path},tile=true,patterns={an.patterns},base_seed={an.base_seed}")
        recs += cell
        mats.append([r.per_pattern("rerr") for r in cell])
    clean = [r.clean_err for r in recs[:len(h.seeds())]]
    ref_err = _reference_err(h, an.reference, h.log)
    reference = clean if ref_err is None else ref_err
    r0 = recs[0]
    out = tolerable_voltage(profile.voltages, mats, an.budget, reference,
                            seed=derive_seed(f"tolerable_voltage|{r0.suite}|{r0.model}|{r0.defense}|{aspec}|"
                                             f"{profile.sha256}"))
    out.update(defense=r0.defense, bits=r0.bits, spec=aspec, records=recs)
    return out


def profiled_table(rows: list[dict], profile):
    import pandas as pd

    from bitbench.configs.energy import energy_saving as _saving

    out = []
    for d in rows:
        v, ci = d["v_min"], d["ci95"]
        out.append({"defense": d["defense"], "bits": d["bits"], "analysis": d["spec"],
                    "V_min on the maps [95% CI]": _volt_cell(v, ci),
                    "energy saved [95% CI]": _pct_cell(_saving(profile, v), [_saving(profile, ci[1]),
                                                                             _saving(profile, ci[0])]),
                    "mean RErr % per voltage": ", ".join(f"{u:g} V: {_pct(m)}" for u, m in
                                                         zip(d["voltages"], d["mean_rerr"]))})
    return pd.DataFrame(out)


def energy_note(profile) -> str:
    name = profile.name or profile.source
    return (f"voltage profile {name} ({profile.kind}, {len(profile.voltages)} voltages "
            f"{profile.voltages[0]:g}-{profile.voltages[-1]:g} V, nominal {profile.nominal_voltage:g} V); energy "
            f"model: {energy_model(profile)}; V_min interpolated between measured points, never extrapolated")
