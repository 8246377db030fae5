"""Tasks: what a model's output predicts, its loss, and what counts as an error.

Every task in the benchmark predicts *units* from logits whose last dimension holds one score per class:

* :class:`Classification` -- one label per example: logits ``[N, K]``, labels ``[N]`` (images, sequences);
* :class:`NextToken` -- a causal language model: one label per position, the next token: logits ``[N, T, V]``,
  labels ``[N, T]`` (``y[:, t] = x[:, t + 1]``, the window shifted by one token; vocabulary V).

Both are flattened to units (:meth:`Task.flatten`: logits ``[U, K]``, labels ``[U]``; for classification the
tensors themselves), so every loss, attack objective, format and protection works on them unchanged:

* loss: the mean cross-entropy over units (per token for a language model: ``exp(loss)`` is the per-token
  perplexity, here per byte);
* prediction: the argmax over the last dimension, per unit;
* error: the share of units predicted wrongly (the next-token error for a language model); the robust error of a
  pattern counts the units wrong under the clean memory OR the perturbed one (tokens, for a language model);
* chance accuracy, where an untargeted bit search stops (:meth:`Task.chance_accuracy`): 1 / classes for
  classification; for next-token prediction the accuracy of always predicting the most frequent label of the
  batch (a destroyed language model still predicts spaces), at least 1 / V;
* the attacker's objective: cross-entropy over units (untargeted: raise it -- for a language model, raise the
  perplexity); a targeted search asks for chosen labels on chosen units (T-BFA: a target class, or for a language
  model a target token; :meth:`NextToken.continuation_batch` builds a batch that asks for a chosen continuation).

Which task applies is read from the labels (:func:`task_for`): one label per example is classification, one per
position next-token prediction. Pure torch; no other project imports.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Task", "Classification", "NextToken", "CLASSIFICATION", "NEXT_TOKEN", "TASKS", "task_for"]


class Task:
    """Base of the tasks (see the module docstring). ``label_dims``: dimensions of the labels (with the batch)."""

    name = "task"
    unit = "unit"          # what one prediction is about, for messages ('example', 'token')
    label_dims = 1

    def flatten(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [U, K], labels [U])``: one row per predicted unit (the tensors themselves when already so)."""
        if logits.dim() == 2 and y.dim() == 1:
            return logits, y
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over units (nats)."""
        return F.cross_entropy(*self.flatten(logits, y))

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Predicted label per unit: argmax over the last dimension (shape: the labels')."""
        return logits.argmax(-1)

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        """Share of units predicted correctly."""
        return (self.predictions(logits) == y).float().mean().item()

    def chance_accuracy(self, y: torch.Tensor, num_classes: int) -> float:
        """The accuracy at which an untargeted search has destroyed the model (labels ``y`` of its batch)."""
        return 1.0 / num_classes

    def check_logits(self, out, n: int, seq: int | None, num_classes: int) -> str | None:
        """What is wrong with a model's output ``out`` for ``n`` inputs (``seq``: their length, for per-position
        tasks) whose labels need ``num_classes`` classes; None if it fits."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class Classification(Task):
    """One label per example: logits ``[N, K]``, labels ``[N]``."""

    name = "classification"
    unit = "example"
    label_dims = 1

    def check_logits(self, out, n, seq, num_classes):
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != n or out.shape[1] < num_classes:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return f"returns {shape} for {n} images; expected logits [N, classes] with at least {num_classes} classes"
        return None


class NextToken(Task):
    """A causal language model: at every position the next token; logits ``[N, T, V]``, labels ``[N, T]``."""

    name = "next_token"
    unit = "token"
    label_dims = 2

    def chance_accuracy(self, y: torch.Tensor, num_classes: int) -> float:
        """The accuracy of always predicting the most frequent label of ``y`` (at least 1 / V)."""
        flat = y.reshape(-1)
        if flat.numel() == 0:
            return 1.0 / num_classes
        share = torch.bincount(flat.cpu(), minlength=num_classes).max().item() / flat.numel()
        return max(1.0 / num_classes, share)

    def check_logits(self, out, n, seq, num_classes):
        if not isinstance(out, torch.Tensor) or out.dim() != 3 or out.shape[0] != n or out.shape[1] != seq \
                or out.shape[2] < num_classes:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return (f"returns {shape} for {n} windows of {seq} tokens; expected next-token logits [N, T, vocab] with "
                    f"T = {seq} and a vocabulary of at least {num_classes} tokens")
        return None

    @staticmethod
    def continuation_batch(x: torch.Tensor, y: torch.Tensor, continuation: torch.Tensor):
        """A batch that asks for ``continuation`` (L tokens) after every window's prefix, teacher-forced:
        ``x'`` = the first ``T - L + 1`` tokens of the window, then ``continuation[:-1]``; its labels keep the
        window's own next tokens before the prefix ends and are ``continuation`` from the prefix's last position
        on. Returns ``(x', y', mask)``: ``mask`` marks the positions whose labels are the continuation. A model
        that predicts every masked label generates exactly the continuation after the prefix (greedy decoding)."""
        cont = continuation.to(device=x.device, dtype=x.dtype).reshape(-1)
        T, L = x.shape[1], cont.numel()
        if not 1 <= L <= T:
            raise ValueError(f"a continuation of {L} tokens does not fit windows of {T} tokens")
        p = T - L + 1                                    # prefix length: positions p-1 .. T-1 predict it
        x2 = torch.cat([x[:, :p], cont[:-1].expand(x.shape[0], L - 1)], 1)
        y2 = torch.cat([y[:, :p - 1], cont.expand(x.shape[0], L)], 1)
        mask = torch.zeros_like(y2, dtype=torch.bool)
        mask[:, p - 1:] = True
        return x2, y2, mask


CLASSIFICATION = Classification()
NEXT_TOKEN = NextToken()
TASKS = {t.name: t for t in (CLASSIFICATION, NEXT_TOKEN)}


def task_for(y: torch.Tensor) -> Task:
    """The task whose labels look like ``y`` (with the batch dimension): ``[N]`` classification, ``[N, T]``
    next-token prediction."""
    for t in TASKS.values():
        if y.dim() == t.label_dims:
            return t
    raise ValueError(f"labels of shape {list(y.shape)}: expected [N] (one class per example) or [N, T] (one next "
                     "token per position)")
