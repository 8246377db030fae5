"""Evaluation under bit errors: every declared metric of the clean memory and of each perturbed one.

One pass over the evaluation split per memory computes the predictions and, batch by batch, the value of every
metric (:mod:`bitbench.configs.metrics`; the built-ins -- error, robust error, non-finite outputs -- and the
plug-ins a run asks for): RErr of one pattern = fraction of evaluation examples misclassified by the clean memory OR
by the perturbed one (the paper's definition). Language models' outputs ``[B, T, V]`` count tokens: logits and
labels are flattened to ``[B*T, V]`` and ``[B*T]``.

Curves (attacks with a flip-count ``sweep``, one pattern per trial): the evaluator measures the evaluation split at
every state the attack reports through ``observe`` (after each committed step; the attack never sees the numbers)
and at its final memory, and keeps per trial: the state under each budget of the sweep and the first flip count at
which the target is reached (``flips_to_target``). The evaluator decides when a trial is done: ``observe`` returns
True once the target is reached, and an attack with ``stop='target'`` (the built-ins' default) ends the trial there;
a trial that does not reach it within its budget is right-censored. Each step changes one tensor, so its evaluation
re-runs only the layers from that tensor's module on (:class:`IncrementalPredictor`; bit for bit the full
predictions). The default target of the error is chance within one percentage point, :data:`CHANCE_MARGIN` below the
error of always guessing the most frequent evaluation class.

An input whose logits are not all finite is predicted as :data:`NONFINITE` (-1, never a label): it counts as an
error. A protected memory is decoded after every perturbation, before it is loaded (its decoder's counts are kept per
pattern; policy ``fail`` counts every input as misclassified). Decode and inference (load + predict) are timed per
pattern.

Faults beyond the weight words: a perturbation's ``context`` (ranges whose metadata words took errors) decodes its
codes, and its ``runtime`` (activation or buffer faults; :mod:`bitbench.attacks.runtime`) is entered around its
forward passes, told the index of every batch's first input. An attack with a clean baseline of its own
(``attack.clean_runtime``: activations quantized, no errors) gets its clean values, and so the clean error and RErr,
from that baseline.

Speed: the model is quantized once; each pattern is drawn into a preallocated buffer, dequantized straight into the
model's parameters and evaluated under ``torch.inference_mode`` on the split kept on the device.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from bitbench.attacks.partial_forward import PartialForward
from bitbench.configs.metrics import MetricOutputs
from bitbench.configs.progress import Progress
from bitbench.configs.record import PatternResult

from .metrics import BUILTIN_METRICS

__all__ = ["predict", "evaluate_attack", "AttackEvaluation", "chance_error", "curve_points", "first_reaching",
           "CHANCE_MARGIN", "NONFINITE", "measure_memory", "flat_outputs"]

CHANCE_MARGIN = 0.01  # default flips-to-target: within one percentage point of chance error

NONFINITE = -1  # the prediction of an input whose logits hold NaN or inf


def default_batch_size(device: torch.device) -> int:
    """Evaluation batch: 256 on CPUs (activations stay in cache: LeNet on 1,000 images is 1.7x faster than in
    one batch of 1,000), 4096 on GPUs."""
    return 4096 if torch.device(device).type == "cuda" else 256


def flat_outputs(logits: torch.Tensor) -> torch.Tensor:
    """Logits as ``[examples, classes]``: a language model's ``[B, T, V]`` as ``[B*T, V]``."""
    return logits.reshape(-1, logits.shape[-1]) if logits.dim() > 2 else logits


def _labels(logits: torch.Tensor) -> torch.Tensor:
    """Per unit (example, or token of a language model: the classes are the logits' last dimension)."""
    return torch.where(torch.isfinite(logits).all(-1), logits.argmax(-1), NONFINITE)


def nonfinite_inputs(pred: torch.Tensor) -> int:
    """Evaluation inputs with a :data:`NONFINITE` prediction (an example, or a window with any such token)."""
    return int((pred == NONFINITE).reshape(pred.shape[0], -1).any(1).sum().item()) if pred.numel() else 0


def _batches(x: torch.Tensor, batch_size: int | None):
    bs = batch_size or default_batch_size(x.device)
    return [(i, x[i:i + bs]) for i in range(0, x.shape[0], bs)] if x.shape[0] > bs else [(0, x)]


def _forwards(model: nn.Module, x: torch.Tensor, batch_size: int | None, runtime):
    """``(start, logits [examples, classes])`` per batch, the pattern's runtime faults (``Perturbation.runtime``,
    contract in :mod:`bitbench.attacks.runtime`) told the index of every batch's first input."""
    for start, xb in _batches(x, batch_size):
        if runtime is not None:
            runtime.batch(start)
        yield start, flat_outputs(model(xb))


def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None, runtime=None) -> torch.Tensor:
    """Predicted labels of ``model`` (eval mode) on ``x`` (already on the model's device), one per example (tokens
    of a language model flattened); :data:`NONFINITE` for an example whose logits are not all finite. ``runtime``:
    a pattern's runtime faults, entered around the forward passes."""
    model.eval()
    with runtime if runtime is not None else nullcontext(), torch.inference_mode():
        return torch.cat([_labels(lg) for _, lg in _forwards(model, x, batch_size, runtime)])


def measure_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, metrics, *, clean_pred=None,
                   batch_size: int | None = None, runtime=None, detected: bool = False) -> tuple[torch.Tensor, dict]:
    """Predictions of the memory loaded into ``model`` on ``(x, y)`` and the value of every metric of ``metrics``
    (``clean_pred=None``: this is the clean memory, whose predictions are the clean ones; metrics without a clean
    value are skipped then). ``y`` is flat (one label per example). ``runtime``: the pattern's runtime faults;
    ``detected``: its decoder reported a detected, uncorrectable error."""
    model.eval()
    with runtime if runtime is not None else nullcontext(), torch.inference_mode():
        return _measure(model, x, y, metrics, clean_pred, batch_size, runtime, detected)


def _measure(model, x, y, metrics, clean_pred, batch_size, runtime, detected):
    clean = clean_pred is None
    use = [m for m in metrics if m.clean or not clean]
    logits_needed = any(m.needs == "logits" for m in use)
    sums = {m.name: 0.0 for m in use}
    preds, start = [], 0
    for _, logits in _forwards(model, x, batch_size, runtime):
        pred = _labels(logits)
        n = pred.shape[0]
        yb = y[start:start + n]
        out = MetricOutputs(logits if logits_needed else None, pred, yb,
                            pred if clean else clean_pred[start:start + n], clean, detected)
        for m in use:
            sums[m.name] += float(m.per_example(out).double().sum())
        preds.append(pred)
        start += n
    pred = torch.cat(preds)
    if pred.shape[0] != y.shape[0]:
        raise ValueError(f"the model predicts {pred.shape[0]} examples for {y.shape[0]} labels")
    total = max(1, y.shape[0])
    values = {m.name: (int(round(sums[m.name])) if m.reduce == "sum" else m.finish(sums[m.name] / total))
              for m in use}
    return pred, values


def failed_values(metrics, y: torch.Tensor, clean_pred: torch.Tensor, classes: int) -> dict:
    """Metric values of a failed inference (a protected memory's policy ``fail``): every example wrong (its logits
    a one-hot vector of a wrong class)."""
    pred = failed_predictions(y)
    logits = torch.nn.functional.one_hot(pred, max(classes, int(pred.max()) + 1 if pred.numel() else 1)).float()
    out = MetricOutputs(logits, pred, y, clean_pred, False, True)
    total = max(1, y.shape[0])
    return {m.name: (int(round(float(m.per_example(out).double().sum()))) if m.reduce == "sum"
                     else m.finish(float(m.per_example(out).double().sum()) / total)) for m in metrics}


@dataclass
class AttackEvaluation:
    """What :func:`evaluate_attack` measured: the clean memory's values and one :class:`PatternResult` per pattern."""

    clean_err: float
    patterns: list = field(default_factory=list)
    traces: list = field(default_factory=list)
    seconds: float = 0.0
    target: dict | None = None      # curves: {'metric': 'err' | 'asr', 'value': fraction}
    clean_nonfinite: int = 0  # evaluation examples with non-finite logits under the clean memory
    clean_values: dict = field(default_factory=dict)   # plug-in metrics of the clean memory
    decode_seconds: list = field(default_factory=list)   # per pattern (protected memories)
    infer_seconds: list = field(default_factory=list)    # per evaluated pattern: load + predict

    @property
    def decode_ms(self) -> float:
        """Mean decode time per pattern in ms (0 when nothing was decoded)."""
        return 1e3 * sum(self.decode_seconds) / len(self.decode_seconds) if self.decode_seconds else 0.0

    @property
    def time_overhead(self) -> float:
        """Mean decode time / mean time of loading and evaluating one pattern (0 when nothing was decoded)."""
        if not self.decode_seconds or not self.infer_seconds:
            return 0.0
        infer = sum(self.infer_seconds) / len(self.infer_seconds)
        return (sum(self.decode_seconds) / len(self.decode_seconds)) / infer if infer > 0 else 0.0

    @property
    def per_pattern_rerr(self) -> list[float]:
        return [p.rerr for p in self.patterns]

    @property
    def per_pattern_err(self) -> list[float]:
        return [p.err for p in self.patterns]


class IncrementalPredictor:
    """Predictions on the evaluation split after each step of a bit search: when a step changed one tensor, only
    the layers from its module on are re-run on each chunk of the split (:class:`PartialForward`, the outputs
    before it kept from the previous state; checked against a full forward on first use per tensor and chunk).
    Keeps the split's activations: used only while they take at most ``max_bytes``; else full predictions."""

    def __init__(self, model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, batch_size: int | None,
                 max_bytes: int = 1 << 30):
        self.model, self.max_bytes = model, max_bytes
        self.chunks = [xb for _, xb in _batches(x, batch_size)]
        self.pfs = [PartialForward(model, params) for _ in self.chunks]
        self.on = True

    @torch.no_grad()   # not inference mode: the recorded activations' version counters detect in-place changes
    def __call__(self, changed: list | None) -> torch.Tensor:
        """Predictions of the model as it is; ``changed``: the tensors (indices into ``params``) changed since the
        previous call (None: unknown, a full forward)."""
        self.model.eval()
        t = changed[0] if self.on and changed is not None and len(changed) == 1 else None
        out = []
        for xc, pf in zip(self.chunks, self.pfs):
            if not self.on:
                out.append(_labels(flat_outputs(self.model(xc))))
                continue
            if t is not None and pf.usable(t):
                with pf.serving(t, update=True):
                    logits = self.model(xc)
                if pf.verified[t] is None:
                    with pf.recording():
                        full = self.model(xc)
                    pf.verify(t, full, logits)
                    logits = full
            else:
                with pf.recording():
                    logits = self.model(xc)
            out.append(_labels(flat_outputs(logits)))
        if self.on and sum(v[0].numel() * v[0].element_size() for pf in self.pfs for v in pf.cache.values()) \
                > self.max_bytes:
            self.on = False                    # too many activations to keep: full predictions from now on
            self.pfs = []
        return torch.cat(out)


def chance_error(y: torch.Tensor, num_classes: int) -> float:
    """The error of always guessing the most frequent class of labels ``y`` (``1 - 1/K`` when balanced)."""
    share = torch.bincount(y.reshape(-1).cpu(), minlength=num_classes).max().item() / max(1, y.numel())
    return min(1.0 - 1.0 / num_classes, 1.0 - share)


def curve_points(states: list[dict], sweep: list[int]) -> list[dict]:
    """For every budget n of ``sweep``: the last state with at most n flips (``flips``: n, ``flips_used``: its
    flips). ``states``: in order, ``flips`` non-decreasing, the first one the starting point."""
    out = []
    for n in sweep:
        s = None
        for st in states:
            if st["flips"] > n:
                break
            s = st
        if s is not None:
            out.append({"flips": int(n), "flips_used": int(s["flips"]),
                        **{k: v for k, v in s.items() if k != "flips"}})
    return out


def failed_predictions(y: torch.Tensor) -> torch.Tensor:
    """Predictions of a failed inference (a protected memory's policy ``fail``): every one wrong."""
    return (y + 1) % (int(y.max()) + 2) if y.numel() else y


def first_reaching(states: list[dict], metric: str, target: float) -> int | None:
    """Flips of the first state whose ``metric`` reaches ``target`` (None: never)."""
    for st in states:
        if st[metric] >= target - 1e-12:
            return int(st["flips"])
    return None


def evaluate_attack(model: nn.Module, qm, attack, x: torch.Tensor, y: torch.Tensor, *, attack_data=None,
                    batch_size: int | None = None, progress: bool = False, indices=None, metrics=(),
                    clean: tuple | None = None, desc: str = "") -> AttackEvaluation:
    """Evaluate ``attack`` on the memory ``qm`` loaded into ``model``.

    ``x``/``y``: the evaluation split (on the model's device). ``attack_data``: the attacker split, the only data
    an adversarial attack sees. ``indices``: evaluate only these pattern indices (sharding). ``metrics``: plug-in
    metrics (:class:`~bitbench.configs.metrics.Metric` objects) measured besides the built-ins. The clean memory is
    loaded back into ``model`` at the end. Curves: see the module docstring.
    """
    t0 = time.perf_counter()
    y = y.reshape(-1)
    plug = list(metrics)
    every = list(BUILTIN_METRICS) + plug
    baseline = attack.clean_runtime(qm, model=model, data=attack_data)   # activations quantized: its own baseline
    qm.load_into(model)
    if clean is None or baseline is not None:
        clean = measure_memory(model, x, y, every, batch_size=batch_size, runtime=baseline)
    clean_pred, clean_vals = clean
    clean_wrong = clean_pred != y
    n = y.shape[0]
    shape: dict = {}

    def classes() -> int:
        """The model's output classes: one forward of one input on first use (only failed patterns and curves
        need them; on a large model that forward is a share of a pattern's time). The shape does not depend on
        the weights the model holds then."""
        if "classes" not in shape:
            with torch.inference_mode():
                shape["classes"] = int(flat_outputs(model(x[:1])).shape[1])
        return shape["classes"]

    ev = AttackEvaluation(clean_err=clean_vals["err"], clean_nonfinite=clean_vals["nonfinite"],
                          clean_values={m.name: clean_vals[m.name] for m in plug if m.clean})
    buf = torch.empty_like(qm.codes)
    recover = qm.recover if qm.decodes else None
    flag_counts = [f"{st['name']}.{st['flagged']}" for st in (qm.describe() or {}).get("stages", [])
                   if st.get("flagged")]
    decoded = torch.empty_like(qm.codes) if recover is not None else None
    if recover is not None:
        recover(qm.codes, None, out=decoded)   # warm-up (lookup tables on the device, zero codes): not timed
    kw = {"model": model, "data": attack_data, "out": buf}
    if indices is not None:
        kw["indices"] = list(indices)
    sweep = getattr(attack, "sweep", None)
    states: dict[int, list] = {}
    extra = getattr(attack, "eval_metrics", None) or (lambda pred, y: {})

    def measure(pred: torch.Tensor, point: dict) -> dict:
        wrong = pred != y
        return {"flips": int(point.get("flips", 0)), "err": wrong.sum().item() / n,
                "rerr": (wrong | clean_wrong).sum().item() / n, "loss": float(point.get("loss", 0.0)),
                "acc": float(point.get("acc", 0.0)), **extra(pred, y)}

    if sweep is not None and getattr(attack, "observes", False):
        metric = getattr(attack, "curve_metric", "err")
        target = getattr(attack, "curve_target", None)
        if target is None:
            target = max(0.0, chance_error(y, classes()) - CHANCE_MARGIN)
        ev.target = {"metric": metric, "value": float(target)}
        incremental = IncrementalPredictor(model, qm.parameters_of(model), x, batch_size)
        obs_buf = torch.empty_like(qm.codes) if recover is not None else None
        loaded: dict = {}   # the decoded memory of the last evaluated state (protected memories)
        starts = torch.tensor(qm.offsets, device=qm.codes.device)

        def observe(index: int, codes: torch.Tensor, point: dict) -> bool:
            """Measure the state; True once it reached the target (the evaluator's decision to end the trial)."""
            if recover is not None:  # the state as the accelerator computes with it: decoded
                r = recover(codes, None, out=obs_buf)
                if r.failed:
                    pred = failed_predictions(y)
                else:
                    prev = loaded.get("codes") if int(index) in states else None
                    changed = None   # the tensors whose decoded words changed since the last evaluation
                    if prev is not None:
                        diff = torch.nonzero(prev != r.codes).view(-1)
                        changed = torch.unique(torch.searchsorted(starts, diff, right=True) - 1).tolist()
                    qm.load_into(model, r.codes)
                    pred = incremental(changed)
                    loaded["codes"] = r.codes.clone()
            else:
                qm.load_into(model, codes)
                pred = incremental(point.get("tensors") if int(index) in states else None)
            st = measure(pred, point)
            states.setdefault(int(index), []).append(st)
            return st[metric] >= ev.target["value"] - 1e-12

        kw["observe"] = observe
    total = len(indices) if indices is not None else attack.num_perturbations()
    bar = Progress(total, desc or "patterns", "patterns", enabled=progress)
    try:
        for pert in attack.perturbations(qm, **kw):
            codes, counts, failed, detected = pert.codes, None, False, False
            if recover is not None:
                rec = recover(pert.codes, pert.check, out=decoded)
                codes, counts, failed = rec.codes, dict(rec.stats, failed=int(rec.failed)), rec.failed
                detected = failed or any(counts.get(k, 0) > 0 for k in flag_counts)
                ev.decode_seconds.append(rec.seconds)
            if failed:  # the inference fails: every input counts as misclassified
                pred = failed_predictions(y)
                vals = failed_values(every, y, clean_pred, classes())
            else:
                t_inf = time.perf_counter()
                qm.load_into(model, codes, context=pert.context)
                pred, vals = measure_memory(model, x, y, every, clean_pred=clean_pred, batch_size=batch_size,
                                            runtime=pert.runtime, detected=detected)
                ev.infer_seconds.append(time.perf_counter() - t_inf)
            res = PatternResult(index=pert.index, seed=pert.seed, err=vals["err"], rerr=vals["rerr"],
                                info=dict(pert.info), protection=counts, nonfinite=vals["nonfinite"],
                                masked=vals["masked"], sdc=vals["sdc"], due=vals["due"],
                                values={m.name: vals[m.name] for m in plug})
            if sweep is not None:
                st = states.pop(pert.index, [])
                final = measure(pred, pert.info)
                if not st or st[-1]["flips"] != final["flips"]:
                    st.append(final)
                res.curve = curve_points(st, sweep)
                res.flips_used = int(pert.info.get("flips", final["flips"]))
                res.stop_reason = pert.info.get("stop")
                if ev.target is not None:
                    res.flips_to_target = first_reaching(st, ev.target["metric"], ev.target["value"])
            ev.patterns.append(res)
            if pert.trace is not None:
                ev.traces.append(pert.trace)
            bar.update(1)
    finally:
        bar.close()
        qm.load_into(model)
    ev.seconds = time.perf_counter() - t0
    return ev
