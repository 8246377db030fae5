"""Training: quantization-aware training, weight clipping, and hooks for defenses that change the step.

A *step* object computes the gradients of one batch into the parameters' ``.grad`` (see :class:`QATStep`; random
bit error training plugs in its own, :class:`defenses.randbet.RandBETStep`). The :class:`Trainer` owns the data
order, the optimizer and schedule, weight clipping after each step, progress display and atomic, resumable
checkpoints (one per epoch; a resumed run ends with exactly the weights of an uninterrupted one on the CPU; each
carries a content digest, verified before it is resumed from: a damaged one is reported and not used).

Randomness never touches the global RNG: the data order, augmentation and the step's own randomness come from
``torch.Generator`` objects seeded from ``TrainConfig.seed``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bitbench.configs.errors import UsageError
from bitbench.configs.progress import Progress

from .io import CheckpointError, load_checkpoint, save_checkpoint
from .qat import FlatQuantizer
from .quantization import QuantScheme

__all__ = ["TrainConfig", "QATStep", "Trainer", "train", "CHECKPOINT_FORMAT", "evaluate_error",
           "read_resume_checkpoint"]

CHECKPOINT_FORMAT = "bitbench.train_checkpoint/2"  # /2: with a content digest (defenses.io)


@dataclass
class TrainConfig:
    """Training recipe (defaults: the paper's SGD recipe, sized for the embedded MNIST data).

    lr schedule ``'multistep'`` multiplies the lr by ``gamma`` at the given fractions of ``epochs``
    (the paper: 2/5, 3/5, 4/5); ``'cosine'`` anneals to 0; ``'constant'`` keeps it.
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
    seed: int = 0
    device: str = "cpu"
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
        self.milestones = tuple(float(m) for m in self.milestones)

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
        """The options that change the trained weights (not device/progress)."""
        d = self.to_dict()
        d.pop("progress")
        d.pop("device")
        return d


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


class QATStep:
    """One quantization-aware step: forward/backward on the dequantized weights (straight-through).

    With ``scheme=None`` on the trainer this is plain float training.
    """

    name = "qat"

    def __call__(self, trainer: "Trainer", x: torch.Tensor, y: torch.Tensor) -> dict:
        model = trainer.forward_model  # the (possibly wrapped) module, as the Trainer documents for ``wrap``
        if trainer.quantizer is None:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
        else:
            with trainer.quantizer.straight_through():
                logits = model(x)
                loss = F.cross_entropy(logits, y)
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
        self.optimizer = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=config.lr,
                                         momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0,
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
        k = sum(1 for m in c.milestones if epoch >= int(round(m * c.epochs)))
        return c.lr * (c.gamma ** k)

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
        one dict per epoch (loss, acc, lr, seconds and what the step reports).
        """
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
            bar = Progress(n // world, f"epoch {self.epoch + 1}/{c.epochs}", "img", enabled=c.progress and rank == 0)
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
                stats = self.step(self, x, y)
                self.optimizer.step()
                if self.w_max is not None:
                    if self.quantizer is not None:
                        self.quantizer.clip_(self.w_max)  # one op on the flat parameter buffer
                    else:
                        with torch.no_grad():
                            for p in self._clip_params:
                                p.clamp_(-self.w_max, self.w_max)
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
    """Top-1 error (a fraction) of ``model`` in eval mode."""
    model.eval()
    dev = next(model.parameters()).device
    wrong = 0
    for i in range(0, x.shape[0], batch_size):
        wrong += (model(x[i:i + batch_size].to(dev)).argmax(1).cpu() != y[i:i + batch_size]).sum().item()
    return wrong / max(1, x.shape[0])


def train(model: nn.Module, train_x, train_y, config: TrainConfig | dict | None = None, **kw) -> list[dict]:
    """Convenience: ``Trainer(model, config, **kw).fit(train_x, train_y)``."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    fit_kw = {k: kw.pop(k) for k in ("checkpoint", "key", "stop_after") if k in kw}
    return Trainer(model, cfg, **kw).fit(train_x, train_y, **fit_kw)
