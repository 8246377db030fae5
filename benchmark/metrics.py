"""The built-in metrics (error, robust error, non-finite outputs) and a few optional ones, registered from above the
core (:mod:`bitbench.configs.metrics` defines the contract and the registry).

The built-ins are measured on every pattern and carry the declarations of the record's fields (``err``, ``rerr``,
``nonfinite``, and the outcome classes ``masked``, ``sdc``, ``due``, which add up to the evaluated examples:
:data:`bitbench.configs.record.RECORD_FIELDS`); the optional ones are asked for with ``--metric``
(or ``metrics = [...]`` in a suite): ``changed`` (share of predictions that differ from the clean memory's: silent
data corruption of the output), ``topk_err:k=5`` (top-k error), ``nll`` (mean negative log-likelihood of the labels,
nats) and ``perplexity`` (its exponential: a language model's perplexity per token).
"""

from __future__ import annotations

import math

import torch

from bitbench.configs.metrics import Metric, MetricOutputs
from bitbench.configs.registries import register_metric

__all__ = ["BUILTIN_METRICS", "Err", "RErr", "NonFinite", "Masked", "SDC", "DUE", "Changed", "TopKErr", "NLL",
           "Perplexity", "BUILTIN_NAMES"]

NONFINITE = -1


class _Builtin(Metric):
    builtin = True


class Err(_Builtin):
    """Error: examples whose prediction is wrong (a non-finite output is wrong)."""

    registry_name = "err"

    def per_example(self, out: MetricOutputs):
        return (out.pred != out.y).float()


class RErr(_Builtin):
    """Robust error: examples wrong on the clean OR the perturbed memory."""

    registry_name = "rerr"
    clean = False

    def per_example(self, out: MetricOutputs):
        return ((out.pred != out.y) | (out.clean_pred != out.y)).float()


class NonFinite(_Builtin):
    """Examples whose logits held NaN or inf."""

    registry_name = "nonfinite"
    kind, fmt, reduce = "count", "int", "sum"

    def per_example(self, out: MetricOutputs):
        return (out.pred == NONFINITE).float()


class _Outcome(_Builtin):
    kind, fmt, reduce, clean = "count", "int", "sum", False


class Masked(_Outcome):
    """Masked: the prediction equals the clean memory's (finite outputs, no detected error)."""

    registry_name = "masked"

    def per_example(self, out: MetricOutputs):
        if out.detected:
            return torch.zeros_like(out.pred, dtype=torch.float32)
        return ((out.pred == out.clean_pred) & (out.pred != NONFINITE)).float()


class SDC(_Outcome):
    """Silent data corruption: the prediction changed, with finite outputs and no detected error."""

    registry_name = "sdc"

    def per_example(self, out: MetricOutputs):
        if out.detected:
            return torch.zeros_like(out.pred, dtype=torch.float32)
        return ((out.pred != out.clean_pred) & (out.pred != NONFINITE)).float()


class DUE(_Outcome):
    """Detected or unrecoverable: non-finite outputs, or every example of a pattern with a detected error."""

    registry_name = "due"

    def per_example(self, out: MetricOutputs):
        if out.detected:
            return torch.ones_like(out.pred, dtype=torch.float32)
        return (out.pred == NONFINITE).float()


BUILTIN_METRICS = (Err(), RErr(), NonFinite(), Masked(), SDC(), DUE())
BUILTIN_NAMES = tuple(m.name for m in BUILTIN_METRICS)


@register_metric("changed")
class Changed(Metric):
    """Changed predictions: share of examples whose prediction differs from the clean memory's."""

    title = "Changed %"
    clean = False

    def per_example(self, out: MetricOutputs):
        return (out.pred != out.clean_pred).float()


@register_metric("topk_err")
class TopKErr(Metric):
    """Top-k error: the label is not among the k largest logits (a non-finite output is wrong)."""

    needs = "logits"

    def __init__(self, k: int = 5):
        """Args:
            k: how many of the largest logits count as a hit."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            from bitbench.configs.spec import SpecError

            raise SpecError(f"k must be an integer >= 1, got {k!r}")
        self.k = k
        self.title = f"Top-{k} Err %"

    @property
    def name(self) -> str:
        return f"top{self.k}_err"

    def per_example(self, out: MetricOutputs):
        lg = out.logits
        top = lg.topk(min(self.k, lg.shape[1]), dim=1).indices
        hit = (top == out.y[:, None]).any(1) & torch.isfinite(lg).all(1)
        return (~hit).float()


@register_metric("nll")
class NLL(Metric):
    """Negative log-likelihood of the labels, mean over examples (nats; a non-finite output counts as 100 nats)."""

    needs, kind, fmt, title = "logits", "nonneg", "num", "NLL"

    def per_example(self, out: MetricOutputs):
        lg = out.logits.float()
        nll = torch.nn.functional.cross_entropy(lg, out.y, reduction="none")
        return torch.where(torch.isfinite(nll), nll, torch.full_like(nll, 100.0)).clamp(max=100.0)


@register_metric("perplexity")
class Perplexity(NLL):
    """Perplexity: exp of the mean negative log-likelihood per example (per token of a language model)."""

    title = "PPL"

    def finish(self, value: float) -> float:
        return math.exp(min(value, 700.0))
