"""What the website's tables show, declared in one place: :data:`TABLES` (one per threat model) and
:data:`COLUMNS`.

A column is a title, a number format (:data:`FORMATS`), a sort direction, the tables it belongs to, a tooltip and
a getter from an entry to a :class:`~.site_values.Value` (a number with its 95% CI, a censoring bound, a text); a
column with ``each`` expands into one column per rate, flip budget, attack or plug-in metric of the suite (a
plug-in metric's column takes its number format and sort direction from the entries' declaration). Adding a
column is one :class:`Column` declaration (``build_site(data, columns=COLUMNS + (my_column,))``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from bitbench.configs.energy import Bounded, analysis_title, tolerable_cell
from bitbench.configs.entry import entry_pattern_fields
from bitbench.configs.schema import format_cell, format_number
from bitbench.configs.suite import format_rate, same_rate

from .ranking import rate_result, result_of
from .site_plots import flips_plot, random_plot
from .site_values import (NONFINITE, PAPER_MARK, RERR, SuiteView, Value, curve_value, curved, flips_value,
                          is_paper, per_model_text, seed_words, summary_value)

__all__ = ["Format", "FORMATS", "Column", "Table", "BoundColumn", "COLUMNS", "TABLES", "EACH", "expand_columns"]


@dataclass(frozen=True)
class Format:
    """How a column's numbers are written and whether it sorts as numbers. ``core``: the core's number format
    (:func:`bitbench.configs.schema.format_cell`: ``pct``, ``pct1``, ``num``, ``ms``, ``int``, ``flips``), the one
    cell formatter of every table; ``show``: a site-only format (number -> text) where the core has none."""

    numeric: bool
    core: str | None = None
    show: Callable[[float], str] | None = None
    unit: str = ""

    def number(self, v: float) -> str:
        return format_number(self.core, v) if self.core else self.show(v)

    def cell(self, v: float, lo: float | None = None, hi: float | None = None) -> str:
        """``mean [lo, hi]`` (the interval left out where it shows as the mean itself)."""
        if self.core:
            return format_cell(self.core, v, interval=None if lo is None or hi is None else (lo, hi))
        text = self.show(v)
        if lo is None or hi is None or (self.show(lo) == text and self.show(hi) == text):
            return text
        return f"{text} [{self.show(lo)}, {self.show(hi)}]"


FORMATS: dict[str, Format] = {
    "pct": Format(True, "pct", unit="%"),       # a fraction in [0, 1], shown as percent (2 decimals)
    "pct1": Format(True, "pct1", unit="%"),
    "num": Format(True, "num"),                 # 3 significant digits
    "int": Format(True, "int"),
    "count": Format(True, "flips"),             # flip counts (a median may end in .5)
    "ms": Format(True, "ms", unit="ms"),
    "rate": Format(True, show=format_rate),     # a bit error rate (fraction), shown as percent
    "volt": Format(True, show=lambda x: f"{x:.3f}", unit="V"),
    "float": Format(True, show=lambda x: f"{x:.4g}"),
    "text": Format(False),
    "code": Format(False),                      # text in a monospace font (specs)
}
BETTER = (None, "lower", "higher")
ROLES = ("id", "context", "metric")


@dataclass(frozen=True)
class Column:
    """A column declaration.

    ``key``/``title``/``doc``: the column's id, header and tooltip, ``str.format`` templates over the names of
    ``each``'s expansion (``{rate}``, ``{rate_text}``, ``{attack}``, ``{flips}``, ``{metric}``, ``{title}``,
    ``{doc}``); ``tables``: the :data:`TABLES` keys it appears in; ``fmt``: a :data:`FORMATS` key; ``better``:
    ``"lower"``/``"higher"`` (the first click on the header sorts best first) or None (no direction); ``get(view,
    entry, *args) -> Value | None`` (args: the expansion's); ``each``: an :data:`EACH` key, one column per item (an
    item may set its own ``fmt`` and ``better``, e.g. a plug-in metric's); ``role``: ``"metric"`` (a table or row
    is shown only where a metric column has a value), ``"context"`` (shown with the metrics: clean error, memory
    overhead) or ``"id"`` (rank, name, spec); ``shown(view) -> bool``: whether the column is shown for a suite
    (default: some entry has a value)."""

    key: str
    title: str
    tables: tuple
    fmt: str
    better: str | None
    doc: str
    get: Callable[..., Value | None]
    each: str | None = None
    role: str = "metric"
    shown: Callable[[SuiteView], bool] | None = None

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ValueError(f"column {self.key!r}: format {self.fmt!r} is not one of {sorted(FORMATS)}")
        if self.better not in BETTER:
            raise ValueError(f"column {self.key!r}: better must be one of {BETTER}, got {self.better!r}")
        if self.role not in ROLES:
            raise ValueError(f"column {self.key!r}: role must be one of {ROLES}, got {self.role!r}")
        if isinstance(self.tables, str) or not self.tables:
            raise ValueError(f"column {self.key!r}: tables must be a non-empty tuple of table keys")


@dataclass(frozen=True)
class Table:
    """A threat model's table: ``order(view)`` lists the suite's entries in rank order (the table's initial
    order), ``plot(view, plot_id)`` draws its SVG (or None); ``every_entry``: a row for every entry of the suite
    (the suite's main table), else only for entries with a value in one of its metric columns."""

    key: str
    title: str
    doc: str
    order: Callable[[SuiteView], list]
    plot: Callable[[SuiteView, str], str | None] | None = None
    every_entry: bool = False


@dataclass(frozen=True)
class _Param:
    """One item of an ``each`` expansion: the getter's extra arguments, the template names, whether the column is
    emphasized (the headline rate) and the column attributes it sets itself (``fmt``, ``better``)."""

    args: tuple
    names: dict
    emphasis: bool = False
    sets: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BoundColumn:
    """A column expanded for one suite: what a table renders."""

    key: str
    title: str
    fmt: str
    better: str | None
    doc: str
    role: str
    emphasis: bool
    get: Callable[[dict], Value | None]


# ----------------------------------------------------------------------------------------------------------------
# getters: entry -> Value (reading through .site_values)
def _num(x, **kw) -> Value | None:
    return None if x is None else Value(v=x, **kw)


def _rank(view: SuiteView, e: dict) -> Value | None:
    r = view.random_rank.get(e["name"])
    if r is None:
        return None
    ties = [x["name"] for x in view.entries if x is not e and view.random_rank.get(x["name"]) == r]
    return Value(v=r, note=f"shares rank {r} with {', '.join(ties)}" if ties else "")


def _entry_cell(view: SuiteView, e: dict) -> Value:
    return Value(text=e["name"], href=view.page(e), mark=PAPER_MARK if is_paper(e) else "",
                 note="reported by a paper, not reproduced by this benchmark" if is_paper(e) else "")


def _models(view: SuiteView, e: dict) -> Value:
    n = len(e["train_seeds"])
    return Value(v=n, note=seed_words(e) if is_paper(e) else f"training seed{'s' if n > 1 else ''} {seed_words(e)}")


def _clean(view: SuiteView, e: dict) -> Value | None:
    pm = e.get("per_model_clean_err")
    note = f"per model {per_model_text(pm)}" if pm and len(pm) > 1 else \
        ("reported by a paper" if is_paper(e) else "")
    return _num(e["clean_err"], note=note)


def _decode_ms(view: SuiteView, e: dict) -> Value | None:
    ms = [r["decode_ms"] for r in e["results"] if r.get("rate") is not None and r.get("decode_ms") is not None]
    return _num(sum(ms) / len(ms) if ms else None, note="mean over the rates and models")


def _rate_rerr(view: SuiteView, e: dict, rate: float) -> Value | None:
    return summary_value(e, rate_result(e, rate), "rerr", RERR)


def _attack_rerr(view: SuiteView, e: dict, attack: str) -> Value | None:
    return summary_value(e, result_of(e, attack), "rerr", RERR)


def _nonfinite(view: SuiteView, e: dict, rate: float) -> Value | None:
    return summary_value(e, rate_result(e, rate), "nonfinite", NONFINITE)


def _metric(view: SuiteView, e: dict, name: str) -> Value | None:
    f = next((x for x in entry_pattern_fields(e) if x.name == name), None)
    return None if f is None else summary_value(e, view.headline(e), name, f)


def _bfa_err(view: SuiteView, e: dict, attack: str, n: int) -> Value | None:
    r = result_of(e, attack)
    if not curved(r) or n not in r["curve"]["flips"]:
        return None
    return curve_value(view, e, r, "err", r["curve"]["flips"].index(n))


def _detection(view: SuiteView, e: dict, attack: str) -> Value | None:
    r = result_of(e, attack)
    return None if r is None else _num(r.get("detection"), note="over every model's trials")


def _other_final(view: SuiteView, e: dict, attack: str, metric: str) -> Value | None:
    return curve_value(view, e, result_of(e, attack), metric, -1)


def _tolerable_value(view: SuiteView, e: dict, budget: float, reference: str) -> Value | None:
    a = next((x for x in e.get("tolerable") or [] if (x["budget"], x["reference"]) == (budget, reference)), None)
    if a is None:
        return None
    p, (lo, hi) = a["p_star"], a["ci95"]
    bound = {"<": "<", ">": ">"}.get(p["rel"], "")
    return Value(v=p["value"], bound=bound, lo=lo["value"] if lo["rel"] == "=" else None,
                 hi=hi["value"] if hi["rel"] == "=" else None,
                 interval=f"95% CI over {len(a['train_seeds'])} models x {len(a['per_model_rerr'][0][0])} chips",
                 note=f"{tolerable_cell(Bounded(**p), [Bounded(**lo), Bounded(**hi)])}; {a['evaluations']} rates "
                      f"evaluated ({a['spec']})")


def _flip_rank(view: SuiteView, e: dict) -> Value | None:
    return _num(view.adversarial_rank.get(e["name"], (None, None))[0])


def _budget_rank(view: SuiteView, e: dict, attack: str) -> Value | None:
    return _num(view.adversarial_rank.get(e["name"], (None, None))[1])


# ---- expansions of `each`: one column per item
def _rates(view: SuiteView) -> list[_Param]:
    h = view.suite.headline_rate
    return [_Param((r,), {"rate": f"{r:.10g}", "rate_text": format_rate(r)},
                   emphasis=h is not None and same_rate(r, h)) for r in view.suite.rates]


def _nonfinite_rates(view: SuiteView) -> list[_Param]:
    """The rates at which some entry had a pattern with non-finite outputs."""
    out = []
    for p in _rates(view):
        rs = [rate_result(e, p.args[0]) for e in view.entries]
        if any(v for r in rs if r for row in r.get("per_model", {}).get("nonfinite", []) for v in row):
            out.append(_Param(p.args, p.names))
    return out


def _curved_attacks(view: SuiteView) -> set:
    return {r["attack"] for e in view.entries for r in e["results"] if curved(r)}


def _plain_attacks(view: SuiteView) -> list[_Param]:
    done = _curved_attacks(view)
    return [_Param((a,), {"attack": a}) for a in view.suite.attacks if a not in done]


def _metrics(view: SuiteView) -> list[_Param]:
    h = view.suite.headline_rate
    better = {True: "lower", False: "higher", None: None}
    return [_Param((n,), {"metric": n, "title": f.title or n, "doc": f.doc,
                          "rate_text": format_rate(h) if h is not None else "–"},
                   sets={"fmt": f.fmt if f.fmt in FORMATS else "num", "better": better[f.lower_is_better]})
            for n, f in view.metrics.items()] if h is not None else []


def _bfa_flips(view: SuiteView) -> list[_Param]:
    flips = view.adversarial[0]
    if flips is None:
        return []
    sweep = sorted({n for e in view.entries for r in [result_of(e, flips)] if curved(r) for n in r["curve"]["flips"]})
    return [_Param((flips, n), {"attack": flips, "flips": n}) for n in sweep]


def _curve_attacks(view: SuiteView) -> list[_Param]:
    flips, budgets, others = view.adversarial
    return [_Param((a,), {"attack": a}) for a in ([flips] if flips else []) + list(budgets) + list(others)]


def _budget_attacks(view: SuiteView) -> list[_Param]:
    return [_Param((a,), {"attack": a}) for a in view.adversarial[1]]


def _last_budget(view: SuiteView) -> list[_Param]:
    budgets = view.adversarial[1]
    return [_Param((budgets[-1],), {"attack": budgets[-1]})] if budgets else []


def _other_attacks(view: SuiteView) -> list[_Param]:
    out = []
    for a in view.adversarial[2]:
        metrics = {r["target"]["metric"] for e in view.entries for r in [result_of(e, a)]
                   if curved(r) and r.get("target")} or {"err"}
        for m in sorted(metrics):
            out.append(_Param((a, m), {"attack": a, "m": m, "metric": "ASR" if m == "asr" else "Err"}))
    return out


def _other_targets(view: SuiteView) -> list[_Param]:
    return [_Param((a,), {"attack": a}) for a in view.adversarial[2]]


def _tolerables(view: SuiteView) -> list[_Param]:
    kinds = sorted({((a["budget"], a["reference"]), analysis_title(a)) for e in view.entries
                    for a in e.get("tolerable") or []})
    return [_Param(key, {"key": f"{key[0]:g}-{key[1]}", "title": title,
                         "ref": "its own clean error" if key[1] == "own" else "the normal row's clean error",
                         "budget": f"{100 * key[0]:g}"}) for key, title in kinds]


EACH: dict[str, Callable[[SuiteView], list[_Param]]] = {
    "tolerable": _tolerables,          # the tolerable-rate analyses the entries carry, by (budget, reference)
    "rate": _rates,                    # the suite's random bit error rates ({rate}, {rate_text})
    "nonfinite_rate": _nonfinite_rates,  # the rates where some entry had non-finite outputs
    "plain_attack": _plain_attacks,    # the suite's extra attacks without curves ({attack})
    "metric": _metrics,                # the plug-in metrics the entries declare ({metric}, {title}, {doc})
    "bfa_flips": _bfa_flips,           # the flip budgets of the BFA sweep the adversarial table ranks by
    "curve_attack": _curve_attacks,    # every attack with curves
    "budget_attack": _budget_attacks,  # the budgeted attacks (no target), by budget
    "last_budget": _last_budget,       # the largest budget attack
    "other_attack": _other_attacks,    # other attacks with curves, per metric of their target ({metric})
    "other_target": _other_targets,    # other attacks with curves ({attack})
}

_ALL = ("random", "adversarial", "energy")
_RAND, _ADV = ("random",), ("adversarial",)
_CI = "mean [95% CI] over the models and chips (a bootstrap over both)"

COLUMNS: tuple[Column, ...] = (
    Column("rank", "Rank", _RAND, "int", "lower", "Rank group by RErr at the suite's headline rate: 1 + the number "
           "of entries significantly better (the 95% CI of the paired difference on the same chips excludes 0); "
           "entries that are not separable share a rank", _rank, role="id"),
    Column("rank", "Rank", _ADV, "int", "lower", "Rank by robustness to the flip search: fewer trials reaching the "
           "target within the budget first, then more flips (a censored trial never ranks above one that reached "
           "the target with more flips)", _flip_rank, role="id"),
    Column("entry", "Entry", _ALL, "text", None, "Row name, linked to its page (" + PAPER_MARK + ": reported by "
           "a paper, not reproduced by this benchmark)", _entry_cell, role="id"),
    Column("defense", "Defense", _ALL, "code", None, "Canonical defense spec (+ names a protected memory)",
           lambda v, e: Value(text=e["defense"]), role="id"),
    Column("model", "Model", _RAND, "text", None, "Architecture",
           lambda v, e: Value(text=e["model"] + (" (user)" if e.get("model_source") == "user" else "")),
           role="id"),
    Column("bits", "Bits", _RAND, "int", None, "Bits per weight (the memory's word width)",
           lambda v, e: Value(v=e["bits"]), role="id"),
    Column("models", "Models", _RAND + _ADV, "int", None, "Trained models the row was measured on (training "
           "seeds); the confidence intervals cover these models and the chips", _models, role="id"),
    Column("clean_err", "Clean Err", _RAND + _ADV, "pct", "lower", "Test error of the clean quantized model, mean "
           "over the models", _clean, role="context"),
    Column("mem", "Mem +%", _RAND + _ADV, "pct", "lower", "Check bits per data bit of a protected memory "
           "(+secded, +radar); 0 without protection", lambda v, e: Value(v=e.get("memory_overhead", 0.0)),
           role="context", shown=lambda v: any(e.get("memory_overhead") for e in v.entries)),
    Column("decode_ms", "Decode ms", _RAND, "ms", "lower", "Decode time of a protected memory per pattern, mean "
           "over the rates and models", _decode_ms, role="context"),
    Column("rerr@{rate}", "RErr {rate_text}", _RAND, "pct", "lower", "Robust test error at bit error rate "
           "p = {rate_text} (wrong on the clean OR the perturbed model), " + _CI, _rate_rerr, each="rate"),
    Column("rerr@{attack}", "RErr {attack}", _RAND, "pct", "lower", "Robust test error under {attack}, " + _CI,
           _attack_rerr, each="plain_attack"),
    Column("metric@{metric}", "{title} {rate_text}", _RAND, "pct", "lower", "{doc}, at the headline rate p = "
           "{rate_text} (a metric the entries declare), " + _CI, _metric, each="metric"),
    Column("nonfinite@{rate}", "Non-finite {rate_text}", _RAND, "float", "lower", "Patterns whose evaluation gave "
           "non-finite outputs (NaN or inf, counted as errors) at p = {rate_text}, of all patterns of all models",
           _nonfinite, each="nonfinite_rate"),
    Column("err@{flips}", "Err {flips} flips", _ADV, "pct", "lower", "Test error once {attack} has flipped at "
           "most {flips} bits, mean [95% CI] over the models and trials", _bfa_err, each="bfa_flips"),
    Column("flips_to_chance", "Flips to chance", _ADV, "count", "higher", "First flip count at which the test "
           "error reached the target (chance level): median [min, max] over every model's trials, (k/T) trials "
           "that reached it within the budget; > n: not within n flips (right-censored)",
           lambda v, e: flips_value(result_of(e, v.adversarial[0])) if v.adversarial[0] else None),
    Column("detected@{attack}", "Detected {attack}", _ADV, "pct", "higher", "Share of the bits {attack} flipped "
           "that fell into groups whose checksum mismatched (then recovered)", _detection, each="curve_attack"),
    Column("rerr@{attack}", "RErr {attack}", _ADV, "pct", "lower", "Robust test error under the budgeted attack "
           "{attack} (at most eps flipped bits, one per weight), mean [95% CI] over the models and trials",
           _attack_rerr, each="budget_attack"),
    Column("final@{attack}@{m}", "{metric} {attack}", _ADV, "pct", "lower", "The metric of {attack}'s target "
           "after the whole search (ASR: attack success rate), mean [95% CI] over the models and trials",
           _other_final, each="other_attack"),
    Column("ftt@{attack}", "Flips to target {attack}", _ADV, "count", "higher", "First flip count at which "
           "{attack} reached its target: median [min, max] over every model's trials, (k/T) reached; > n: "
           "censored", lambda v, e, a: flips_value(result_of(e, a)), each="other_target"),
    Column("budget_rank@{attack}", "Rank {attack}", _ADV, "int", "lower", "Rank group by RErr under {attack} "
           "(lower is better; ties where the paired difference is not significant)", _budget_rank,
           each="last_budget", role="id"),
)

COLUMNS += (
    Column("tolerable@{key}", "{title}", ("energy",), "rate", "higher", "Tolerable bit error rate p*: the highest "
           "rate whose mean RErr stays within {budget} points of {ref}, with its 95% interval (docs/energy.md)",
           _tolerable_value, each="tolerable"),
)

TABLES: tuple[Table, ...] = (
    Table("random", "Random bit errors", "Random bit errors at rate p in the quantized weights (the suite's fixed "
          "patterns, shared by every entry and model). Cells: mean [95% CI] over the models and chips. Ranked in "
          "rank groups by RErr at the headline rate, lower is better: an entry's rank is 1 + the number of "
          "entries significantly better; entries that are not separable share a rank.",
          lambda v: [e for _, e in v.random_ranked], random_plot, every_entry=True),
    Table("adversarial", "Adversarial bit flips", "Bits chosen by an attacker: the progressive bit search (BFA), "
          "one curve per trial, and the budgeted attack. Cells: mean [95% CI] over the models and trials; flips "
          "to the target as median [min, max] (k/T reached), '> n' where a trial did not reach it within n flips "
          "(right-censored). Ranked by robustness: fewer trials reaching the target within the budget first, "
          "then more flips.", lambda v: [e for _, _, e in v.adversarial_ranked], flips_plot),
    Table("energy", "Energy", "Low-voltage operation: the bit error rates and supply voltages an entry tolerates.",
          lambda v: sorted(v.entries, key=lambda e: e["name"])),
)


# ----------------------------------------------------------------------------------------------------------------
def _missing(v: Value | None) -> bool:
    return v is None or v.missing


def expand_columns(view: SuiteView, table: str, columns: Sequence[Column] = COLUMNS) -> list[BoundColumn]:
    """The columns of ``table`` for one suite, in declaration order, the hidden ones (``shown``) left out."""
    out = []
    for c in columns:
        if table not in c.tables:
            continue
        if c.each is None:
            params = [_Param((), {})]
        elif c.each in EACH:
            params = EACH[c.each](view)
        else:
            raise ValueError(f"column {c.key!r}: each={c.each!r} is not one of {sorted(EACH)}")
        for p in params:
            fmt, better = p.sets.get("fmt", c.fmt), p.sets.get("better", c.better)
            if fmt not in FORMATS or better not in BETTER:
                raise ValueError(f"column {c.key!r}: an item sets format {fmt!r} / better {better!r}")
            bc = BoundColumn(c.key.format(**p.names), c.title.format(**p.names), fmt, better,
                             c.doc.format(**p.names), c.role, p.emphasis,
                             (lambda e, c=c, p=p: c.get(view, e, *p.args)))
            if c.shown is not None:
                if not c.shown(view):
                    continue
            elif c.role != "id" and all(_missing(bc.get(e)) for e in view.entries):
                continue
            out.append(bc)
    keys = [c.key for c in out]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"table {table!r}: duplicate column keys {dup}")
    return out
