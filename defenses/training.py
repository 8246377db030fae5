"""Training: quantization-aware training, weight clipping, and hooks for defenses that change the step.

A *step* object computes the gradients of one batch into the parameters' ``.grad`` (see :class:`QATStep`; random
bit error training plugs in its own, :class:`defenses.randbet.RandBETStep`). The :class:`Trainer` owns the data
order, the optimizer and schedule, weight clipping after each step, progress display and atomic, resumable
checkpoints (one per epoch; a resumed run ends with exactly the weights of an uninterrupted one on the CPU; each
carries a content digest, verified before it is resumed from: a damaged one is reported and not used).

Randomness never touches the global RNG: the data order, augmentation and the step's own randomness come from
``torch.Generator`` objects seeded from ``TrainConfig.seed``. Training runs with ``TrainConfig.threads`` intra-op
threads (torch's setting is restored afterwards): CPU kernels (convolution and matrix-product weight gradients)
sum in an order that depends on the thread count, so the weights are a function of the recipe, the seed and the
backend (:func:`training_backend`) only at a fixed count (docs/reproducibility.md).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from typing import Callable

import torch
from torch import nn

from bitbench.configs.errors import UsageError
from bitbench.configs.progress import Progress

from .io import CheckpointError, load_checkpoint, save_checkpoint
from .qat import FlatQuantizer
from .quantization import QuantScheme
from .tasks import task_for

__all__ = ["TrainConfig", "QATStep", "Trainer", "train", "CHECKPOINT_FORMAT", "evaluate_error",
           "read_resume_checkpoint", "training_backend", "intra_op_threads", "PAPER_SGD"]

CHECKPOINT_FORMAT = "bitbench.train_checkpoint/2"  # /2: with a content digest (defenses.io)
# The paper's optimizer and schedule (a suite that trains otherwise records the difference under deviations).
PAPER_SGD = {"batch_size": 128, "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
             "schedule": "multistep", "milestones": (0.4, 0.6, 0.8), "gamma": 0.1}
OPTIMIZERS = ("sgd", "adamw")


@dataclass
class TrainConfig:
    """Training recipe (defaults: the paper's SGD recipe, sized for the embedded MNIST data).

    lr schedule ``'multistep'`` multiplies the lr by ``gamma`` from epoch ``floor(m * epochs)`` (0-based) on, for
    each milestone fraction ``m`` (the paper: 2/5, 3/5, 4/5, i.e. epochs floor(2E/5), floor(3E/5), floor(4E/5));
    ``'cosine'`` anneals to 0 (not the paper's: recorded as a deviation); ``'constant'`` keeps it. ``threads``: the
    intra-op thread count training runs with (part of the recipe: another count gives other weights on the CPU).
    ``optimizer``: ``'sgd'`` (the paper's: SGD with ``momentum``, Nesterov, L2 ``weight_decay``) or ``'adamw'``
    (AdamW, torch's betas 0.9/0.999, decoupled ``weight_decay``; ``momentum``/``nesterov`` unused; what transformer
    language models train with; recorded as a deviation).
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: tuple = (0.4, 0.6, 0.8)
    gamma: float = 0.1
    optimizer: str = "sgd"
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    progress: bool = True

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise UsageError(f"epochs must be an int >= 0, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr!r}")
        if self.schedule not in ("multistep", "cosine", "constant"):
            raise UsageError(f"schedule must be 'multistep', 'cosine' or 'constant', got {self.schedule!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise UsageError(f"threads must be an int >= 1 (the intra-op thread count of training), got "
                             f"{self.threads!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"optimizer must be one of {', '.join(repr(o) for o in OPTIMIZERS)}, got "
                             f"{self.optimizer!r}")
        self.milestones = tuple(float(m) for m in self.milestones)
        if not all(0 <= m <= 1 for m in self.milestones):
            raise UsageError(f"milestones are fractions of the epochs in [0, 1], got {list(self.milestones)}")

    def milestone_epochs(self) -> list[int]:
        """The 0-based epochs from which each lr drop applies: ``floor(m * epochs)`` with ``m`` taken as the
        decimal it is written as (0.4 -> 2/5: floor(2E/5) exactly, no float rounding)."""
        return [math.floor(Fraction(repr(m)) * self.epochs) for m in self.milestones]

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown training option(s) {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def identity(self) -> dict:
        """What changes the trained weights: the recipe (not progress; the device only by its type) and the
        backend that computes it (:func:`training_backend`)."""
        d = self.to_dict()
        d.pop("progress")
        d.pop("device")
        d["backend"] = training_backend(self.device)
        if d["optimizer"] == "sgd":  # the default: absent, so models trained before the option keep their keys
            d.pop("optimizer")
        return d

    def recipe(self) -> dict:
        """The training recipe for a result record: optimizer, schedule (with its milestone epochs), threads, the
        backend (:func:`training_backend`), and ``deviations``: where it differs from the paper's SGD recipe
        (:data:`PAPER_SGD`)."""
        d = {k: getattr(self, k) for k in ("optimizer", "epochs", "batch_size", "lr", "momentum", "nesterov",
                                           "weight_decay", "schedule", "threads")}
        d["backend"] = training_backend(self.device)
        if self.schedule == "multistep":
            d.update(milestones=self.milestone_epochs(), gamma=self.gamma)
        dev = []
        if self.optimizer != "sgd":
            dev.append(f"optimizer {self.optimizer!r} (the paper: SGD with Nesterov momentum)")
        if self.schedule != "multistep":
            dev.append(f"lr schedule {self.schedule!r} (the paper: multistep, lr x0.1 at epochs floor(2E/5), "
                       "floor(3E/5), floor(4E/5))")
        elif self.milestones != PAPER_SGD["milestones"] or self.gamma != PAPER_SGD["gamma"]:
            dev.append(f"lr x{self.gamma:g} at epochs {self.milestone_epochs()} (the paper: x0.1 at "
                       "floor(2E/5), floor(3E/5), floor(4E/5))")
        for k in ("batch_size", "lr", "momentum", "nesterov", "weight_decay"):
            if self.optimizer != "sgd" and k in ("momentum", "nesterov"):
                continue   # unused by AdamW
            if getattr(self, k) != PAPER_SGD[k]:
                dev.append(f"{k} {getattr(self, k)!r} (the paper: {PAPER_SGD[k]!r})")
        d["deviations"] = dev
        return d


def training_backend(device) -> dict:
    """What besides the recipe and the seed decides the bits of trained weights: the device type, the torch
    version and, on the CPU, the vector instruction set torch's kernels dispatch to (another one may sum in
    another order). Part of :meth:`TrainConfig.identity`, so a checkpoint is only reused where it is reproduced."""
    dev = torch.device(device)
    out = {"device": dev.type, "torch": torch.__version__.split("+")[0]}
    if dev.type == "cpu":
        out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


@contextmanager
def intra_op_threads(n: int):
    """Run the block with ``n`` torch intra-op threads; the previous count is restored afterwards."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return task_for(y).accuracy(logits, y)


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The task's training loss (mean cross-entropy over examples, or over tokens; :mod:`.tasks`)."""
    return task_for(y).loss(logits, y)


class QATStep:
    """One quantization-aware step: forward/backward on the dequantized weights (straight-through).

    With ``scheme=None`` on the trainer this is plain float training.
    """

    name = "qat"

    def __call__(self, trainer: "Trainer", x: torch.Tensor, y: torch.Tensor) -> dict:
        model = trainer.forward_model  # the (possibly wrapped) module, as the Trainer documents for ``wrap``
        if trainer.quantizer is None:
            logits = model(x)
            loss = _loss(logits, y)
            loss.backward()
        else:
            with trainer.quantizer.straight_through():
                logits = model(x)
                loss = _loss(logits, y)
                loss.backward()
        return {"loss": loss.item(), "acc": _accuracy(logits.detach(), y)}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass

    def identity(self) -> dict:
        return {"step": self.name}


def dist_info() -> tuple[int, int]:
    """(rank, world size) of an initialized torch.distributed process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_mean(values: list[float], device) -> list[float]:
    """Mean over ranks (identity without torch.distributed)."""
    rank, world = dist_info()
    if world == 1:
        return list(values)
    import torch.distributed as dist

    dev = device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return (t / world).tolist()


def _batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


class Trainer:
    """Trains ``model`` on tensors with a quantization scheme (or none), clipping and a step hook.

    Under torch.distributed (``torchrun``) pass ``wrap=DistributedDataParallel``-style wrapping: every rank draws
    the same global batch order and takes its share of each batch (rank::world); gradients are averaged by DDP;
    only rank 0 writes checkpoints.

    Args:
        model: the network (float weights are kept; the deployed model is quantized afterwards).
        config: :class:`TrainConfig`.
        scheme: quantization scheme for the straight-through forward (None: float training).
        step: the step object (default :class:`QATStep`).
        w_max: clamp every quantized parameter to [-w_max, w_max] after each step (None: no clipping).
        augment: ``augment(x, generator) -> x`` applied to each training batch (on its device).
        include, exclude: name patterns of the parameters that are quantized and clipped.
        wrap: optional callable ``wrap(model) -> module`` used for the forward (e.g. DistributedDataParallel).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, *, scheme: QuantScheme | None = None,
                 step=None, w_max: float | None = None, augment: Callable | None = None,
                 include=None, exclude=None, wrap: Callable | None = None):
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.scheme = scheme
        self.step = step if step is not None else QATStep()
        self.w_max = w_max
        self.augment = augment
        self.quantizer = FlatQuantizer(self.model, scheme, include, exclude) if scheme is not None else None
        self._clip_params = (self.quantizer.params if self.quantizer is not None
                             else [p for p in self.model.parameters() if p.requires_grad])
        self.forward_model = wrap(self.model) if wrap is not None else self.model
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum,
                                             nesterov=config.nesterov and config.momentum > 0,
                                             weight_decay=config.weight_decay)
        self.generator = torch.Generator().manual_seed(int(config.seed))
        self.epoch = 0
        self.history: list[dict] = []
        self.global_step = 0

    # -- learning rate -----------------------------------------------------------------------------------------
    def lr_at(self, epoch: int, frac: float = 0.0) -> float:
        c = self.config
        if c.schedule == "constant" or c.epochs == 0:
            return c.lr
        if c.schedule == "cosine":
            t = (epoch + frac) / c.epochs
            return 0.5 * c.lr * (1 + math.cos(math.pi * min(t, 1.0)))
        k = sum(1 for m in c.milestone_epochs() if epoch >= m)
        return c.lr * (c.gamma ** k)

    def clip_(self) -> None:
        """Clamp every clipped parameter to [-w_max, w_max] (no-op without ``w_max``)."""
        if self.w_max is None:
            return
        if self.quantizer is not None:
            self.quantizer.clip_(self.w_max)  # one op on the flat parameter buffer
        else:
            with torch.no_grad():
                for p in self._clip_params:
                    p.clamp_(-self.w_max, self.w_max)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "epoch": self.epoch, "global_step": self.global_step,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "step": self.step.state_dict(),
                "generator": self.generator.get_state(), "history": self.history}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.step.load_state_dict(d["step"])
        self.generator.set_state(d["generator"])
        self.epoch = int(d["epoch"])
        self.global_step = int(d["global_step"])
        self.history = list(d["history"])

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self, train_x: torch.Tensor, train_y: torch.Tensor, *, checkpoint: str | os.PathLike | None = None,
            key: str | None = None, stop_after: int | None = None) -> list[dict]:
        """Train for ``config.epochs`` epochs (resuming from ``checkpoint`` if it holds the same ``key``).

        ``stop_after`` ends after that many epochs of this call (used to test resumption). Returns the history:
        one dict per epoch (loss, acc, lr, seconds and what the step reports). Runs with ``config.threads``
        intra-op threads. The weights are clipped before every forward pass (so the initial weights too) and
        after every step, as the original clips them.
        """
        with intra_op_threads(self.config.threads):
            return self._fit(train_x, train_y, checkpoint=checkpoint, key=key, stop_after=stop_after)

    def _fit(self, train_x, train_y, *, checkpoint, key, stop_after) -> list[dict]:
        c = self.config
        if checkpoint is not None and os.path.exists(checkpoint):
            d = read_resume_checkpoint(checkpoint, key)
            if d is not None:
                self.load_state_dict(d)
        n = train_x.shape[0]
        if n == 0:
            raise ValueError("no training data")
        done_here = 0
        rank, world = dist_info()

        while self.epoch < c.epochs:
            if stop_after is not None and done_here >= stop_after:
                break
            lr = self.lr_at(self.epoch)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            count = 0
            unit = "img" if train_x.dim() == 4 else "ex"   # images, or other examples (token windows)
            bar = Progress(n // world, f"epoch {self.epoch + 1}/{c.epochs}", unit, enabled=c.progress and rank == 0)
            self.model.train()
            for idx in _batches(n, c.batch_size, self.generator):
                if len(idx) < world:  # too few images to give every rank one: skipped alike on all ranks
                    continue
                x = train_x[idx].to(self.device, non_blocking=True)
                y = train_y[idx].to(self.device, non_blocking=True)
                if self.augment is not None:
                    # The global batch is augmented on every rank (one generator stream, identical on all ranks),
                    # then each rank takes its share: the data order never diverges between ranks.
                    x = self.augment(x, self.generator)
                if world > 1:
                    x, y, idx = x[rank::world], y[rank::world], idx[rank::world]
                self.optimizer.zero_grad(set_to_none=True)
                self.clip_()  # before every forward pass, as the original: the initial weights too
                stats = self.step(self, x, y)
                self.optimizer.step()
                self.clip_()
                self.global_step += 1
                for k, v in stats.items():
                    if isinstance(v, (int, float)):
                        sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
                count += len(idx)
                bar.update(len(idx))
                bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.3f}",
                                acc=f"{stats.get('acc', float('nan')):.3f}")
            rec = {k: v / count for k, v in sums.items()}
            bar.set_postfix(**{k: f"{rec[k]:.3f}" for k in ("loss", "acc", "loss_perturbed") if k in rec})
            bar.close()  # without a terminal: one line per epoch with the epoch's mean loss and accuracy
            rec.update(epoch=self.epoch + 1, lr=lr, seconds=time.perf_counter() - t0)
            self.history.append(rec)
            self.epoch += 1
            done_here += 1
            if checkpoint is not None:
                if rank == 0:  # under torch.distributed only rank 0 writes; the others wait for the file
                    d = self.state_dict()
                    d["key"] = key
                    save_checkpoint(d, checkpoint)
                if world > 1:
                    torch.distributed.barrier()
        return self.history


def read_resume_checkpoint(path, key: str | None, *, warn=None) -> dict | None:
    """The verified training checkpoint at ``path`` if it belongs to ``key`` (another key or format: None).

    A damaged or unreadable file is never used: it is reported (``warn(message)``, default
    :func:`warnings.warn`) and None is returned, so training starts from the beginning and replaces it.
    """
    try:
        d = load_checkpoint(path, hint="it is not used: training starts from the beginning and replaces it")
    except CheckpointError as e:
        if warn is None:
            warnings.warn(str(e), RuntimeWarning, stacklevel=3)
        else:
            warn(str(e))
        return None
    if d.get("format") != CHECKPOINT_FORMAT or d.get("key") != key:
        return None
    return d


@torch.no_grad()
def evaluate_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 error (a fraction of the examples, or of the tokens for a language model) of ``model`` in eval
    mode."""
    model.eval()
    dev = next(model.parameters()).device
    task = task_for(y)
    wrong = 0
    for i in range(0, x.shape[0], batch_size):
        pred = task.predictions(model(x[i:i + batch_size].to(dev))).cpu()
        wrong += (pred != y[i:i + batch_size]).sum().item()
    return wrong / max(1, y.numel())


def train(model: nn.Module, train_x, train_y, config: TrainConfig | dict | None = None, **kw) -> list[dict]:
    """Convenience: ``Trainer(model, config, **kw).fit(train_x, train_y)``."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    fit_kw = {k: kw.pop(k) for k in ("checkpoint", "key", "stop_after") if k in kw}
    return Trainer(model, cfg, **kw).fit(train_x, train_y, **fit_kw)
