"""Cells: the records of one (suite, model, defense, attack) across trained models, and their statistics.

A result record holds one trained model (:class:`~.record.ResultRecord`); a *cell* is what a table row or a
leaderboard result reports: the same defense and attack over several models (training seeds), every model meeting
the same chips. Its values form a models x patterns matrix per quantity; :meth:`Cell.stats` summarizes one (mean over
models and chips, model spread, chip spread, 95% confidence interval by a bootstrap over models and chips:
:mod:`.stats`), seeded by the cell's identity so that the same records always give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .metrics import field_from_declaration
from .record import RecordError, ResultRecord
from .schema import Field, show_value
from .stats import CellStats, derive_seed, flips_summary, summarize_cell

__all__ = ["Cell", "group_cells"]


@dataclass
class Cell:
    """One cell: ``records`` of the same suite, dataset, model, defense and attack, one per trained model (in
    training-seed order; a supplied model is one record with ``train_seed`` None)."""

    records: list

    def __post_init__(self):
        if not self.records:
            raise ValueError("a cell needs at least one record")
        r0 = self.records[0]
        seen = set()
        for r in self.records:
            for key in ("suite", "dataset", "model", "defense", "attack", "eval_split", "n_patterns", "metrics",
                        "target", "task"):
                if getattr(r, key) != getattr(r0, key):
                    raise RecordError(key, f"{show_value(getattr(r, key))} in {r.path or 'a record'} differs from "
                                           f"{show_value(getattr(r0, key))} in {r0.path or 'another record'}: one "
                                           "cell holds records of the same suite, model, defense and attack")
            if r.seeds != r0.seeds:
                raise RecordError("patterns.seed", "the records of one cell must meet the same chips (pattern "
                                                   "seeds)")
            if r.train_seed in seen:
                raise RecordError("train_seed", f"two records of model seed {r.train_seed} in one cell")
            seen.add(r.train_seed)

    # -- identity ------------------------------------------------------------------------------------------------
    @property
    def first(self) -> ResultRecord:
        return self.records[0]

    # the record-level fields every record of the cell shares
    defense = property(lambda self: self.first.defense)
    attack = property(lambda self: self.first.attack)
    attack_name = property(lambda self: self.first.attack_name)
    rate = property(lambda self: self.first.rate)
    flips = property(lambda self: self.first.flips)
    bits = property(lambda self: self.first.bits)
    target = property(lambda self: self.first.target)
    protection = property(lambda self: self.first.protection)

    @property
    def train_seeds(self) -> list:
        return [r.train_seed for r in self.records]

    @property
    def n_models(self) -> int:
        return len(self.records)

    @property
    def n_patterns(self) -> int:
        return self.first.n_patterns

    @property
    def has_curve(self) -> bool:
        return self.first.has_curve

    @property
    def cached(self) -> bool:
        return all(r.cached for r in self.records)

    def identity(self) -> str:
        r = self.first
        return f"{r.suite}|{r.dataset}|{r.model}|{r.defense}|{r.attack}"

    def pattern_fields(self) -> list[Field]:
        return self.first.pattern_fields()

    def metric_fields(self) -> list[Field]:
        return [field_from_declaration(n, d) for n, d in self.first.metrics.items()]

    # -- values --------------------------------------------------------------------------------------------------
    def matrix(self, name: str) -> list[list]:
        """``[model][pattern]`` values of a pattern- or trial-level field or metric."""
        return [r.per_pattern(name) for r in self.records]

    def clean(self, name: str = "err") -> list:
        """Per model: the clean memory's value."""
        return [r.clean_value(name) for r in self.records]

    def model_values(self, name: str) -> list:
        """Per model: a model-level field (``decode_ms``, ``train_seed``, ...)."""
        return [getattr(r, name) for r in self.records]

    def stats(self, name: str = "rerr") -> CellStats:
        """Mean, spreads and 95% CI of a pattern-level quantity over models and chips (:func:`.stats.summarize_cell`)."""
        return summarize_cell(self.matrix(name), seed=derive_seed(self.identity() + "|" + name))

    def summary(self, name: str = "rerr") -> dict:
        """``{mean, model_sd, chip_sd, ci95}`` of a pattern-level quantity (the shape entries store)."""
        s = self.stats(name)
        return {"mean": s.mean, "model_sd": s.model_sd, "chip_sd": s.chip_sd, "ci95": list(s.ci95)}

    def clean_summary(self, name: str = "err") -> dict:
        s = self.clean_stats(name)
        return {"mean": s.mean, "model_sd": s.model_sd, "chip_sd": None, "ci95": list(s.ci95)}

    def clean_stats(self, name: str = "err") -> CellStats:
        """Over models only: the clean memory's value (one 'chip')."""
        return summarize_cell([[v] for v in self.clean(name)], seed=derive_seed(self.identity() + "|clean." + name))

    def flips_summary(self) -> dict | None:
        """The censored flips-to-target summary over every model's trials (:func:`.stats.flips_summary`; None
        without a target): a trial that did not reach the target is censored at the flips it spent."""
        if self.target is None:
            return None
        ftt = [p.flips_to_target for r in self.records for p in r.patterns]
        used = [p.flips_used if p.flips_to_target is None else max(p.flips_used, self.flips or 0)
                for r in self.records for p in r.patterns]
        return flips_summary(ftt, used)

    def curve_matrix(self, key: str) -> tuple[list, list] | None:
        """``(flips, values[n][model][trial])`` of a curve metric (``err``, ``asr``, ...); None where a point
        lacks it."""
        flips = [pt["flips"] for pt in self.first.patterns[0].curve]
        out = []
        for i in range(len(flips)):
            per_model = []
            for r in self.records:
                vals = []
                for p in r.patterns:
                    pt = p.curve[i] if i < len(p.curve) else None
                    if pt is None or pt.get(key) is None:
                        return None
                    vals.append(pt[key])
                per_model.append(vals)
            out.append(per_model)
        return flips, out


def group_cells(records) -> list[Cell]:
    """Records -> cells, one per (suite, dataset, model, defense, attack), in order of first appearance; the
    records of a cell in training-seed order."""
    order: dict = {}
    for r in records:
        order.setdefault((r.suite, r.dataset, r.model, r.defense, r.attack), []).append(r)
    return [Cell(sorted(rs, key=lambda r: (r.train_seed is None, r.train_seed or 0))) for rs in order.values()]
