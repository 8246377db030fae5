"""Evaluation under bit errors: clean error, per-pattern error and robust error (RErr).

RErr of one pattern = fraction of evaluation examples misclassified by the clean quantized model OR by the
perturbed one (the paper's definition); the suite reports mean, std, min and max over patterns.

Curves (attacks with a flip-count ``sweep``, one pattern per trial): the evaluator measures the evaluation split at
every state the attack reports through ``observe`` (after each committed step; the attack never sees the numbers)
and at its final memory, and keeps per trial: the state under each budget of the sweep (the last state with at
most n flips: err, rerr, the attacker's loss and accuracy, the attack's own metrics such as T-BFA's ASR) and the
first flip count at which the target is reached (``flips_to_target``; only for attacks that report every step).
Each step changes one tensor, so its evaluation re-runs only the layers from that tensor's module on
(:class:`IncrementalPredictor`; bit for bit the full predictions). The default target of the error is chance within
one percentage point, :data:`CHANCE_MARGIN` below the error of
always guessing the most frequent evaluation class, ``1 - max_c share(c)`` (``1 - 1/K`` on a balanced split, so a
collapse onto one class counts): 89% on a balanced 10-class split, the reference BFA's stop at 11% test accuracy
on CIFAR-10.

An input whose logits are not all finite (a bit error in a float format can make a weight inf or NaN, or so large
that the logits overflow) is predicted as :data:`NONFINITE` (-1, never a label): it counts as an error, and each
pattern records how many such inputs it had (``PatternResult.nonfinite``; the record's ``nonfinite`` field).

A protected memory (``rquant+secded``: a :class:`ProtectedModel`) is decoded after every perturbation, before it
is loaded: the pattern's data and check words go through the decoder, whose counts are kept per pattern
(:attr:`PatternResult.protection`); a pattern whose decoder fails the inference (policy ``fail``) counts every
input as misclassified and is not evaluated. Decode and inference (load + predict) are timed per pattern. Curve
states of an adversarial attack on a protected memory are measured after decoding too (re-running the layers from
the first tensor whose decoded words changed).

Speed: the model is quantized once; each pattern is drawn into a preallocated buffer, dequantized straight into
the model's parameters (no deep copy, no re-quantization) and the evaluation split stays on the device as tensors,
evaluated under ``torch.inference_mode``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from bitbench.attacks.partial_forward import PartialForward
from bitbench.configs.progress import Progress
from bitbench.configs.record import PatternResult, Summary
from bitbench.defenses.protection import ProtectedModel

__all__ = ["predict", "evaluate_attack", "AttackEvaluation", "summarize", "chance_error", "curve_points",
           "first_reaching", "CHANCE_MARGIN", "NONFINITE"]

CHANCE_MARGIN = 0.01  # default flips-to-target: within one percentage point of chance error

NONFINITE = -1  # the prediction of an input whose logits hold NaN or inf


def default_batch_size(device: torch.device) -> int:
    """Evaluation batch: 256 on CPUs (activations stay in cache: LeNet on 1,000 images is 1.7x faster than in
    one batch of 1,000), 4096 on GPUs."""
    return 4096 if torch.device(device).type == "cuda" else 256


def _labels(logits: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(logits).all(1), logits.argmax(1), NONFINITE)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted labels of ``model`` (eval mode) on ``x`` (already on the model's device); :data:`NONFINITE` for an
    input whose logits are not all finite."""
    model.eval()
    batch_size = batch_size or default_batch_size(x.device)
    if x.shape[0] <= batch_size:
        return _labels(model(x))
    return torch.cat([_labels(model(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)])


def summarize(values: list[float]) -> dict:
    """mean, std (population), min, max of a list of fractions (the record's :class:`Summary`)."""
    return Summary.of(values).to_json()


@dataclass
class AttackEvaluation:
    """What :func:`evaluate_attack` measured: the clean error and one :class:`PatternResult` per pattern."""

    clean_err: float
    patterns: list = field(default_factory=list)
    traces: list = field(default_factory=list)
    seconds: float = 0.0
    target: dict | None = None      # curves: {'metric': 'err' | 'asr', 'value': fraction}
    clean_nonfinite: int = 0  # evaluation inputs with non-finite logits under the clean memory
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

    @property
    def indices(self) -> list[int]:
        return [p.index for p in self.patterns]

    @property
    def rerr(self) -> dict:
        return summarize(self.per_pattern_rerr)


class IncrementalPredictor:
    """Predictions on the evaluation split after each step of a bit search: when a step changed one tensor, only
    the layers from its module on are re-run on each chunk of the split (:class:`PartialForward`, the outputs
    before it kept from the previous state; checked against a full forward on first use per tensor and chunk).
    Keeps the split's activations: used only while they take at most ``max_bytes``; else full predictions."""

    def __init__(self, model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, batch_size: int | None,
                 max_bytes: int = 1 << 30):
        bs = batch_size or default_batch_size(x.device)
        self.model, self.max_bytes = model, max_bytes
        self.chunks = [x[i:i + bs] for i in range(0, x.shape[0], bs)]
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
                out.append(_labels(self.model(xc)))
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
            out.append(_labels(logits))
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
                    batch_size: int | None = None, progress: bool = False, indices=None,
                    clean_pred: torch.Tensor | None = None, desc: str = "") -> AttackEvaluation:
    """Evaluate ``attack`` on the quantized model ``qm`` loaded into ``model``.

    ``x``/``y``: the evaluation split (on the model's device). ``attack_data``: the attacker split, the only data
    an adversarial attack sees. ``indices``: evaluate only these pattern indices (sharding); the clean
    codes are loaded back into ``model`` at the end. Curves: see the module docstring.
    """
    t0 = time.perf_counter()
    if clean_pred is None:
        qm.load_into(model)
        clean_pred = predict(model, x, batch_size)
    clean_wrong = clean_pred != y
    n = y.shape[0]
    ev = AttackEvaluation(clean_err=clean_wrong.sum().item() / n,
                          clean_nonfinite=int((clean_pred == NONFINITE).sum().item()))
    buf = torch.empty_like(qm.codes)
    recover = qm.recover if isinstance(qm, ProtectedModel) else None
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
            with torch.inference_mode():
                target = max(0.0, chance_error(y, int(model(x[:1]).shape[1])) - CHANCE_MARGIN)
        ev.target = {"metric": metric, "value": float(target)}

        incremental = IncrementalPredictor(model, qm.parameters_of(model), x, batch_size)

        obs_buf = torch.empty_like(qm.codes) if recover is not None else None
        loaded: dict = {}   # the decoded memory of the last evaluated state (protected memories)
        starts = torch.tensor(qm.offsets, device=qm.codes.device)

        def observe(index: int, codes: torch.Tensor, point: dict) -> None:
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
            states.setdefault(int(index), []).append(measure(pred, point))

        kw["observe"] = observe
    total = len(indices) if indices is not None else attack.num_perturbations()
    bar = Progress(total, desc or "patterns", "patterns", enabled=progress)
    try:
        for pert in attack.perturbations(qm, **kw):
            codes, counts, failed = pert.codes, None, False
            if recover is not None:
                rec = recover(pert.codes, pert.check, out=decoded)
                codes, counts, failed = rec.codes, dict(rec.stats, failed=int(rec.failed)), rec.failed
                ev.decode_seconds.append(rec.seconds)
            if failed:  # the inference fails: every input counts as misclassified
                pred = failed_predictions(y)
            else:
                t_inf = time.perf_counter()
                qm.load_into(model, codes)
                pred = predict(model, x, batch_size)
                ev.infer_seconds.append(time.perf_counter() - t_inf)
            wrong = pred != y
            res = PatternResult(index=pert.index, seed=pert.seed, err=wrong.sum().item() / n,
                                rerr=(wrong | clean_wrong).sum().item() / n, info=dict(pert.info),
                                protection=counts, nonfinite=int((pred == NONFINITE).sum().item()))
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
