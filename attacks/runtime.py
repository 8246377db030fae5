"""Runtime faults: what a bit-error pattern changes outside the weight memory while the model runs.

The evaluation contract. A :class:`~.base.Perturbation` may carry ``runtime``, a :class:`Runtime` bound to the
evaluated module. The evaluator loads the pattern's weights, then, around the model's forward passes for that
pattern,

    with runtime:                      # installs forward hooks / writes perturbed buffers into the module
        for start in range(0, n, batch):
            runtime.batch(start)       # the global index (in the evaluation split) of the batch's first input
            logits = model(x[start:start + batch])

and leaves the module exactly as before on exit (hooks removed, buffers restored). An input's faults depend only on
its global index, never on the batch it runs in (:mod:`.activations`), so a chip is the same at any batch size.
A runtime that is never told a start counts inputs from 0 in the order they run.

The clean baseline of an attack with runtime faults is what the attack says it is: ``attack.clean_runtime(qm,
model=..., data=...)`` returns the runtime of the fault-free deployment (e.g. activations quantized, no errors) or
None (the clean quantized model), and ``attack.clean_baseline`` describes it for result records.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

__all__ = ["Runtime", "CombinedRuntime", "BufferRuntime", "combine"]


class Runtime:
    """Base class of runtime faults (module docstring): a context manager with :meth:`batch`."""

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def batch(self, start: int) -> None:
        """The next forward pass's first input has global index ``start``."""

    def describe(self) -> dict:
        """Facts about the runtime for records (JSON values)."""
        return {}


class CombinedRuntime(Runtime):
    """Several runtimes at once (entered in order, left in reverse order; every one is told every batch)."""

    def __init__(self, parts):
        self.parts = list(parts)
        self._stack: ExitStack | None = None

    def __enter__(self):
        stack = ExitStack()
        try:
            for r in self.parts:
                stack.enter_context(r)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc):
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc) if stack is not None else False

    def batch(self, start: int) -> None:
        for r in self.parts:
            r.batch(start)

    def describe(self) -> dict:
        out: dict = {}
        for r in self.parts:
            out.update(r.describe())
        return out


def combine(*runtimes) -> Runtime | None:
    """One runtime of the non-None ones (None if there are none)."""
    rs = [r for r in runtimes if r is not None]
    if not rs:
        return None
    return rs[0] if len(rs) == 1 else CombinedRuntime(rs)


class BufferRuntime(Runtime):
    """Perturbed buffer values written into ``module`` while entered, the clean ones restored on exit.

    ``values``: ``{buffer name: tensor}`` of the buffers that differ from their stored words."""

    def __init__(self, module: torch.nn.Module, values: dict):
        self.module = module
        self.values = dict(values)
        self._saved: dict = {}

    def __enter__(self):
        bufs = dict(self.module.named_buffers())
        with torch.no_grad():
            for name, v in self.values.items():
                b = bufs[name]
                self._saved[name] = b.detach().clone()
                b.copy_(v.to(device=b.device, dtype=b.dtype))
        return self

    def __exit__(self, *exc):
        bufs = dict(self.module.named_buffers())
        with torch.no_grad():
            for name, v in self._saved.items():
                bufs[name].copy_(v)
        self._saved = {}
        return False

    def describe(self) -> dict:
        return {"buffers": sorted(self.values)}
