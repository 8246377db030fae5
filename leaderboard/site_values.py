"""What the website reads from an entry (format ``bitbench.leaderboard_entry/2``): the one place where its result
fields are read, turned into :class:`Value` cells (a number to sort on, its 95% confidence interval, a censoring
bound, a hover text).

An entry holds one defense measured on several trained models (``train_seeds``); every result carries the
models x patterns values of its quantities (``per_model``) and their statistics (``summary``: mean over models and
chips, model and chip spread, 95% CI), and adversarial results their curves (``curve``: ``[model][trial][flip
budget]``). Statistics are never recomputed differently from the markdown tables: stored summaries are shown as
stored, curve points are summarized by :func:`bitbench.configs.entry.result_summary` with the identity the markdown
generator uses, censored flips by :func:`.ranking.entry_flips`. Ranks come from :mod:`.ranking`. Errors are
fractions in [0, 1] (cells show percent).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from bitbench.configs.entry import entry_pattern_fields, result_summary
from bitbench.configs.fileio import safe_name as file_name
from bitbench.configs.record import RECORD_FIELDS
from bitbench.configs.schema import Field, format_number
from bitbench.configs.stats import format_flips
from bitbench.configs.suite import Suite

from .ranking import (adversarial_attacks, adversarial_ranked, curve_summary, entry_flips, ranked_entries,
                      rate_result)
from .svg import PALETTE

__all__ = ["Value", "SuiteView", "PAPER_MARK", "RERR", "NONFINITE", "summary_value", "quantity_summary",
           "curve_value", "flips_value", "flips_parts", "trial_flips", "is_paper", "curved",
           "metric_fields", "per_model_text", "safe_name", "seed_words"]

PAPER_MARK = "†"
RERR = RECORD_FIELDS.get("rerr")
NONFINITE = RECORD_FIELDS.get("nonfinite")


@dataclass(frozen=True)
class Value:
    """One cell. ``v``: the number shown and sorted on (None: missing); ``lo``/``hi``: its 95% confidence interval
    in the same unit (shown ``mean [lo, hi]`` by the core's cell formatter), described by ``interval`` (e.g.
    ``"95% CI over 3 models x 50 chips"``); ``bound``: ``">"`` when ``v`` is a lower bound (``> 100`` flips: the
    trials did not reach the target within the budget; sorted above ``v``), ``"<"`` an upper bound; ``text``: the
    text of a text column (or shown instead of the number, e.g. ``3/150``); ``detail``: muted text after it;
    ``href``: a link inside the site (made by the site, never taken from an entry); ``note``: the cell's hover
    text; ``mark``: appended to the text (``†``)."""

    v: float | None = None
    lo: float | None = None
    hi: float | None = None
    interval: str = ""
    bound: str = ""
    text: str | None = None
    detail: str = ""
    href: str | None = None
    note: str = ""
    mark: str = ""

    @property
    def missing(self) -> bool:
        return self.v is None and not self.text


def safe_name(name: str) -> str:
    """The page or folder name of an entry or suite: the project's file name for it
    (:func:`~bitbench.configs.fileio.safe_name`), never ``index`` (the suite page's own name)."""
    return file_name(name if name.lower() != "index" else name + "\0page")


def is_paper(entry: dict) -> bool:
    return entry["reported_by"] == "paper"


def curved(r: dict | None) -> bool:
    """A result with adversarial curves."""
    return r is not None and r.get("curve") is not None


def metric_fields(entries) -> dict[str, Field]:
    """``{name: Field}`` of the plug-in metrics the entries declare (the first declaration of a name wins), in order
    of first appearance."""
    builtin = {f.name for f in RECORD_FIELDS}
    out: dict[str, Field] = {}
    for e in entries:
        for f in entry_pattern_fields(e):
            if f.name not in builtin:
                out.setdefault(f.name, f)
    return out


# ----------------------------------------------------------------------------------------------------------------
# one suite's entries, with the rankings every table, plot and page shares (computed once)
class SuiteView:
    """A suite and its entries as the site sees them: rankings from :mod:`.ranking`, one colour per entry, curve
    summaries cached (a bootstrap per point, shared by the tables, the plots and the entry pages)."""

    def __init__(self, suite: Suite, entries: list[dict]):
        self.suite = suite
        self.entries = list(entries)
        self._curves: dict = {}

    @cached_property
    def random_ranked(self) -> list:
        """``[(rank or None, entry)]`` best first: rank groups by RErr at the headline rate."""
        return ranked_entries(self.entries, self.suite)

    @cached_property
    def random_rank(self) -> dict:
        return {e["name"]: r for r, e in self.random_ranked}

    @cached_property
    def adversarial(self) -> tuple:
        """(the BFA attack the table ranks by, the budget attacks, the other attacks with curves)."""
        return adversarial_attacks(self.entries, self.suite)

    @cached_property
    def adversarial_ranked(self) -> list:
        """``[(flips rank, budget rank, entry)]`` in flips-rank order (censoring-aware)."""
        return adversarial_ranked(self.entries, self.suite)

    @cached_property
    def adversarial_rank(self) -> dict:
        return {e["name"]: (fr, br) for fr, br, e in self.adversarial_ranked}

    @cached_property
    def metrics(self) -> dict[str, Field]:
        return metric_fields(self.entries)

    @cached_property
    def colors(self) -> dict:
        """One colour per entry (by the random table's rank order), the same in every plot of the suite."""
        return {e["name"]: PALETTE[i % len(PALETTE)] for i, (_, e) in enumerate(self.random_ranked)}

    def page(self, entry: dict) -> str:
        """The entry page's link from the suite page."""
        return f"entries/{safe_name(entry['name'])}.html"

    def headline(self, entry: dict) -> dict | None:
        h = self.suite.headline_rate
        return None if h is None else rate_result(entry, h)

    def curve_summary(self, entry: dict, r: dict, key: str, i: int) -> dict | None:
        """The summary of curve metric ``key`` at flip budget index ``i`` of result ``r`` (cached)."""
        k = (entry["name"], r["attack"], key, i)
        if k not in self._curves:
            self._curves[k] = curve_summary(entry, r, key, i) if curved(r) else None
        return self._curves[k]


# ----------------------------------------------------------------------------------------------------------------
# statistics of a result
def _shape(entry: dict, r: dict) -> str:
    m, n = len(entry["train_seeds"]), r.get("n_patterns")
    what = "trials" if r.get("rate") is None else "chips"
    return f"{m} model{'s' if m != 1 else ''}" + (f" x {n} {what}" if n else "")


def _pct(x) -> str:
    return format_number("pct", x)


def seed_words(entry: dict) -> str:
    """The training seeds of an entry's models in words (``0, 1, 2``; a supplied model: ``supplied``)."""
    if is_paper(entry):
        return "the paper's model"
    return ", ".join("supplied" if s is None else str(s) for s in entry["train_seeds"])


def per_model_text(values, fmt: str = "pct") -> str:
    return ", ".join(format_number(fmt, v) for v in values)


def quantity_summary(entry: dict, r: dict | None, name: str) -> dict | None:
    """``{mean, model_sd, chip_sd, ci95}`` of a quantity of result ``r``: the stored summary; for a quantity whose
    summary entries do not store (counts) but whose per-model values they do, the same statistics computed from
    them (seeded as the stored ones are); None where neither exists (paper rows: ``{mean}`` alone)."""
    if r is None:
        return None
    s = r.get("summary", {}).get(name)
    if s is not None:
        return s
    pm = r.get("per_model", {}).get(name)
    if pm is None or not all(isinstance(v, (int, float)) for row in pm for v in row):
        return None
    return result_summary(pm, f"{entry.get('suite')}|{entry.get('name')}|{r.get('attack')}|{name}")


def _stats_note(entry: dict, r: dict, s: dict, field: Field, name: str) -> str:
    fmt = field.fmt if field.fmt in ("pct", "pct1", "num", "ms", "int") else "num"
    parts = []
    if s.get("model_sd") is not None:
        parts.append(f"model sd {format_number(fmt, s['model_sd'])}")
    if s.get("chip_sd") is not None:
        parts.append(f"{'trial' if r.get('rate') is None else 'chip'} sd {format_number(fmt, s['chip_sd'])}")
    pm = r.get("per_model", {}).get(name)
    if pm is not None and len(pm) > 1:
        parts.append("per model " + per_model_text([sum(row) / len(row) for row in pm], fmt))
    return "; ".join(parts)


def summary_value(entry: dict, r: dict | None, name: str, field: Field) -> Value | None:
    """The cell of quantity ``name`` (declared by ``field``) of result ``r``: ``mean [95% CI]`` over the models and
    chips; ``k/n`` for a quantity aggregated as 'any' (patterns with a non-zero value, e.g. non-finite outputs);
    the mean alone for a row copied from a paper; a missing cell with the result's note where it has no value."""
    if r is None:
        return None
    note = r.get("note") or ""
    if field.agg == "any":
        pm = r.get("per_model", {}).get(name)
        if pm is None:
            return Value(note=note) if note else None
        flat = [v for row in pm for v in row]
        k = sum(1 for v in flat if v)
        return Value(v=k / len(flat) if flat else None, text=f"{k}/{len(flat)}",
                     note="; ".join(x for x in (f"{field.doc}: patterns with any, of {_shape(entry, r)}", note) if x))
    s = quantity_summary(entry, r, name)
    if s is None or s.get("mean") is None:
        return Value(note=note) if note else None
    if is_paper(entry):
        return Value(v=s["mean"], note="; ".join(x for x in ("reported by a paper: the mean alone (no per-model "
                                                             "values)", note) if x))
    lo, hi = s["ci95"] if s.get("ci95") else (None, None)
    return Value(v=s["mean"], lo=lo, hi=hi, interval=f"mean [95% CI] over {_shape(entry, r)}",
                 note="; ".join(x for x in (_stats_note(entry, r, s, field, name), note) if x))


def curve_value(view: SuiteView, entry: dict, r: dict | None, key: str, i: int) -> Value | None:
    """The cell of a curve point: ``mean [95% CI]`` over models and trials."""
    if not curved(r) or key not in r["curve"] or not -len(r["curve"]["flips"]) <= i < len(r["curve"]["flips"]):
        return None
    i = i % len(r["curve"]["flips"])
    s = view.curve_summary(entry, r, key, i)
    parts = []
    if s.get("model_sd") is not None:
        parts.append(f"model sd {_pct(s['model_sd'])}")
    if s.get("chip_sd") is not None:
        parts.append(f"trial sd {_pct(s['chip_sd'])}")
    return Value(v=s["mean"], lo=s["ci95"][0], hi=s["ci95"][1],
                 interval=f"after at most {r['curve']['flips'][i]} flips: mean [95% CI] over {_shape(entry, r)}",
                 note="; ".join(parts))


# ----------------------------------------------------------------------------------------------------------------
# flips to the target: censored trials as "> n"
def flips_parts(s: dict) -> tuple[str, str]:
    """(the median as the core writes it, the rest of :func:`bitbench.configs.stats.format_flips`): ``('> 100',
    '(0/5)')``, ``('20', '[18, 29] (5/5)')``."""
    full = format_flips(s)
    med = (f"> {s['median']:g}" if s["median_censored"] else f"{s['median']:g}") if s["trials"] else full
    return (med, full[len(med):].strip()) if full.startswith(med) else (full, "")


def flips_value(r: dict | None) -> Value | None:
    """Flips to the target over every model's trials (:func:`.ranking.entry_flips`): the median, ``> n`` where it
    falls on a censored trial (a lower bound), then ``[min, max] (reached/trials)`` as the core writes it."""
    if r is None or r.get("target") is None or "flips_to_target" not in r.get("per_model", {}):
        return None
    s = entry_flips(r)
    if not s["trials"]:
        return None
    _, rest = flips_parts(s)
    t = r["target"]
    note = (f"median over {s['trials']} trials (every model's); {s['reached']} reached the target "
            f"({t['metric']} >= {_pct(t['value'])}%) within {s['horizon']} flips; '> n': not within n flips "
            "(right-censored)")
    return Value(v=s["median"], bound=">" if s["median_censored"] else "", detail=rest, note=note)


def trial_flips(r: dict) -> list[list[str]]:
    """Per model, per trial: the flips to the target, or ``> n`` (censored at the n flips the trial spent)."""
    pm = r["per_model"]
    used = pm.get("flips_used")
    out = []
    for m, row in enumerate(pm["flips_to_target"]):
        cells = []
        for t, f in enumerate(row):
            if f is None:
                n = used[m][t] if used is not None else r.get("flips")
                cells.append(f"> {n}" if n is not None else "not reached")
            else:
                cells.append(str(f))
        out.append(cells)
    return out
