"""Metrics as plug-ins: a quantity measured on every bit-error pattern (chip) or adversarial trial.

    import bitbench

    @bitbench.register_metric("top5_err")
    class Top5Err(bitbench.Metric):
        '''Top-5 error: the label is not among the five largest logits.'''
        needs = "logits"
        def per_example(self, out):
            top = out.logits.topk(min(5, out.logits.shape[1]), dim=1).indices
            return (top != out.y[:, None]).all(1).float()

    # python -m benchmark run --metric top5_err   (or `metrics = ["top5_err"]` in a suite)

A metric maps the evaluation's outputs of one memory (the clean one and each perturbed one) to one value per
evaluated example (:meth:`Metric.per_example`: a tensor ``[N]``); the pattern's value is their mean (``reduce =
"mean"``, e.g. an error rate) or sum (``"sum"``, a count), then :meth:`Metric.finish` (e.g. ``exp`` for a
perplexity). Its declaration (:meth:`Metric.field`: value type, column title, number format, sort direction, doc)
is part of every result record and leaderboard entry that carries it, so tables and the leaderboard show its
column without importing the plug-in. The built-in quantities (error, robust error, non-finite outputs) are
metrics of the same kind, registered by the package above the core.

This module is part of the core (no torch): ``per_example`` receives torch tensors from the evaluator, the
declaration is plain data. Third-party packages register metrics through the entry-point group
``bitbench.metrics``.
"""

from __future__ import annotations

import inspect
import re

from .schema import KINDS, FormatError, Field, is_num, show_value

__all__ = ["Metric", "MetricOutputs", "metric_field", "declaration_of", "field_from_declaration", "DECLARATION_KEYS",
           "METRIC_KINDS"]

METRIC_KINDS = ("frac", "nonneg", "count", "num")
DECLARATION_KEYS = ("kind", "title", "fmt", "lower_is_better", "clean", "doc")


class MetricOutputs:
    """What a metric sees of one memory's evaluation (one batch at a time).

    Attributes (torch tensors on the evaluation device):
        logits: the model's outputs ``[N, classes]`` (tokens flattened for language models), only for metrics
            with ``needs = "logits"`` (None otherwise);
        pred: predicted labels ``[N]`` (-1 where the logits are not all finite);
        y: the labels ``[N]``;
        clean_pred: the clean memory's predictions ``[N]`` (when evaluating the clean memory: ``pred`` itself).
        clean: True while the clean memory is evaluated.
        detected: the pattern's memory decoder reported a detected, uncorrectable error (a protection stage's
            declared ``flagged`` count above 0, or a failed inference): the system knows the pattern is faulty.
    """

    __slots__ = ("logits", "pred", "y", "clean_pred", "clean", "detected")

    def __init__(self, logits, pred, y, clean_pred, clean: bool, detected: bool = False):
        self.logits, self.pred, self.y, self.clean_pred, self.clean = logits, pred, y, clean_pred, clean
        self.detected = detected


class Metric:
    """Base class of metrics (module docstring). Class attributes declare the field:

    kind: ``frac`` (a fraction in [0, 1], the default), ``nonneg``, ``count`` (an integer >= 0) or ``num``;
    title: column title (default: the name); fmt: ``pct``, ``pct1``, ``num``, ``ms``, ``int``;
    lower_is_better: sort direction; clean: whether the clean memory has a value (default True);
    needs: ``predictions`` (the default, cheap) or ``logits``; reduce: ``mean`` or ``sum``.
    The doc is the class docstring's first line.
    """

    kind = "frac"
    title: str | None = None
    fmt = "pct"
    lower_is_better = True
    clean = True
    needs = "predictions"
    reduce = "mean"
    registry_name = "metric"

    def per_example(self, out: MetricOutputs):
        """One value per evaluated example of the batch, a tensor ``[N]`` (float)."""
        raise NotImplementedError

    def finish(self, value: float) -> float:
        """The pattern's value from the reduced per-example values (default: unchanged)."""
        return value

    @property
    def name(self) -> str:
        return self.registry_name

    def field(self) -> Field:
        return metric_field(self)


def _doc(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def declaration_of(metric) -> dict:
    """The JSON declaration of a metric (what records and entries carry)."""
    kind = getattr(metric, "kind", "frac")
    if kind not in METRIC_KINDS:
        raise ValueError(f"metric {metric.name!r}: kind must be one of {METRIC_KINDS}, got {kind!r}")
    return {"kind": kind, "title": metric.title or metric.name, "fmt": metric.fmt,
            "lower_is_better": bool(metric.lower_is_better), "clean": bool(metric.clean),
            "doc": _doc(type(metric)) or metric.name}


def field_from_declaration(name: str, decl, where: str = "metrics") -> Field:
    """The :class:`Field` of a plug-in metric from its JSON declaration (refused with :class:`FormatError`)."""
    if not isinstance(decl, dict) or set(decl) != set(DECLARATION_KEYS):
        raise FormatError(f"{where}.{name}", f"expected a declaration {{{', '.join(DECLARATION_KEYS)}}}, got "
                                             f"{show_value(decl)}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise FormatError(f"{where}.{name}", "a metric name is lowercase letters, digits and '_'")
    if decl["kind"] not in METRIC_KINDS:
        raise FormatError(f"{where}.{name}.kind", f"expected one of {list(METRIC_KINDS)}, got "
                                                  f"{show_value(decl['kind'])}")
    for k in ("title", "doc"):
        if not isinstance(decl[k], str) or not decl[k].strip() or len(decl[k]) > 200:
            raise FormatError(f"{where}.{name}.{k}", f"expected a non-empty string (at most 200 characters), got "
                                                     f"{show_value(decl[k])}")
    if decl["fmt"] not in ("pct", "pct1", "num", "ms", "int"):
        raise FormatError(f"{where}.{name}.fmt", f"expected one of pct, pct1, num, ms, int, got "
                                                 f"{show_value(decl['fmt'])}")
    for k in ("lower_is_better", "clean"):
        if not isinstance(decl[k], bool):
            raise FormatError(f"{where}.{name}.{k}", f"expected true or false, got {show_value(decl[k])}")
    return Field(name, KINDS[decl["kind"]], "pattern", decl["doc"], title=decl["title"], fmt=decl["fmt"],
                 entry="result", lower_is_better=decl["lower_is_better"], clean=decl["clean"],
                 summary=decl["kind"] != "count")


def metric_field(metric) -> Field:
    return field_from_declaration(metric.name, declaration_of(metric))


def check_metric_values(field: Field, values, path: str) -> None:
    for i, v in enumerate(values):
        field.check(v, f"{path}[{i}]")
        if not is_num(v):
            raise FormatError(f"{path}[{i}]", f"expected a finite number, got {show_value(v)}")
