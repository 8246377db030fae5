"""Partial forward passes for bit searches: after a change of one parameter tensor, only what it can affect runs.

A full forward is *recorded*: every leaf module's output of every call, in call order. To evaluate the model
with a change in tensor ``t`` (owned by module M), the leaf modules called before M's first call return their
recorded outputs instead of computing them; M and everything after it run normally. Functional code between
modules still runs (on the recorded values), so the result is the full forward's, bit for bit, as long as

* the forward calls the same leaf modules in the same order every time (eval-mode models do), and
* no module called before M reads ``t`` (no weight sharing across modules, no functional use of ``t``).

Both are checked, per tensor, before a tensor is served partially (:meth:`PartialForward.verify`: a full and a
partial forward with a changed word of ``t`` must give identical logits); a recorded tensor that a later in-place
operation modifies is detected (its version counter) and switches the partial path off for the rest of the
search (that forward itself is still right: the full forward makes the same in-place change). Where the checks
fail, the full forward runs.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from torch import nn

__all__ = ["PartialForward"]


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if next(m.children(), None) is None]


class PartialForward:
    """Recorded leaf-module outputs of ``model`` and, per attacked tensor, which calls may be served from them.

    Args:
        model: the module (eval mode).
        params: the attacked tensors (parameters of ``model``), in the attack's order.
    """

    def __init__(self, model: nn.Module, params: list[torch.Tensor]):
        self.model = model
        self.leaves = _leaves(model)
        ids = {id(p): i for i, p in enumerate(params)}
        self.owners: list[list[nn.Module]] = [[] for _ in params]
        for m in model.modules():
            for p in m._parameters.values():
                if p is not None and id(p) in ids:
                    self.owners[ids[id(p)]].append(m)
        leaf_ids = {id(m) for m in self.leaves}
        # a tensor held by a module with children (its own forward mixes parameters and submodules): full forward
        self.servable = [bool(o) and all(id(m) in leaf_ids for m in o) for o in self.owners]
        self.verified: list[bool | None] = [None] * len(params)  # None: not checked yet
        self.enabled = True
        self.order: list[tuple[int, int]] = []       # (id(module), call number) in call order
        self.cache: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}   # -> (output, version)
        self.mutated: set | None = None              # calls whose output a later in-place op modifies

    # -- recording ---------------------------------------------------------------------------------------------
    @contextmanager
    def recording(self):
        """Record the outputs of the forward run inside the block. An output that a later in-place operation of
        the same forward modifies (e.g. a conv followed by ``ReLU(inplace=True)``) is copied at once; every other
        output is kept by reference (no copy). Which outputs get modified is learnt from the first recording,
        which copies everything, and checked in every later one (a surprise: this recording is not used)."""
        self.order, self.cache = [], {}
        counts: dict[int, int] = {}
        seen: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}
        copy_all = self.mutated is None

        def hook(mod, args, output):
            key = (id(mod), counts.get(id(mod), 0))
            counts[id(mod)] = key[1] + 1
            self.order.append(key)
            if isinstance(output, torch.Tensor):
                out = output.detach()
                seen[key] = (out, out._version)
                if copy_all or key in self.mutated:
                    out = out.clone()
                self.cache[key] = (out, out._version)

        handles = [m.register_forward_hook(hook) for m in self.leaves] if self.enabled else []
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        changed = {k for k, (t, v) in seen.items() if t._version != v}
        if copy_all:
            self.mutated = changed
        elif changed - self.mutated:          # kept by reference but modified later: learn it, skip this one
            self.mutated |= changed
            self.order, self.cache = [], {}

    def _first_call(self, t: int) -> int | None:
        owners = {id(m) for m in self.owners[t]}
        for pos, (mid, _) in enumerate(self.order):
            if mid in owners:
                return pos
        return None

    def usable(self, t: int) -> bool:
        """Whether tensor ``t`` may be evaluated partially (recorded, servable, not refuted by :meth:`verify`)."""
        return self.enabled and self.servable[t] and self.verified[t] is not False and bool(self.order)

    # -- serving -----------------------------------------------------------------------------------------------
    @contextmanager
    def serving(self, t: int, update: bool = False):
        """Inside the block, a forward of the model recomputes only from tensor ``t``'s module on. ``update``: also
        record the recomputed outputs, so that the recording then describes the model as it is now (a change of
        ``t`` leaves the outputs before its module as they were)."""
        first = self._first_call(t)
        serve = set(self.order[:first]) if first is not None else set()
        if not serve:
            with self.recording() if update else nullcontext():
                yield
            return
        mods = {mid for mid, _ in serve}
        counts: dict[int, int] = {}
        saved = []
        for m in self.leaves:
            if id(m) not in mods:
                continue
            orig = m.forward

            def fwd(*args, _m=m, _orig=orig, **kw):
                key = (id(_m), counts.get(id(_m), 0))
                counts[id(_m)] = key[1] + 1
                hit = self.cache.get(key) if key in serve else None
                return hit[0] if hit is not None else _orig(*args, **kw)

            saved.append((m, m.__dict__.get("forward")))
            m.forward = fwd
        hcounts: dict[int, int] = {}
        seen: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}
        calls: list[tuple[int, int]] = []

        def hook(mod, args, output):
            key = (id(mod), hcounts.get(id(mod), 0))
            hcounts[id(mod)] = key[1] + 1
            calls.append(key)
            if key in serve or not isinstance(output, torch.Tensor):
                return
            out = output.detach()
            seen[key] = (out, out._version)
            self.cache[key] = (out.clone() if key in self.mutated else out, out._version)

        handles = [m.register_forward_hook(hook) for m in self.leaves] if update else []
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for m, old in saved:
                if old is None:
                    del m.forward
                else:
                    m.forward = old
        for key in serve:
            hit = self.cache.get(key)
            if hit is not None and hit[0]._version != hit[1]:  # modified in place downstream: never trust it again
                self.enabled = False
        if update:
            changed = {k for k, (x, v) in seen.items() if x._version != v}
            if calls != self.order or changed - self.mutated:   # another call sequence or a surprise: re-record
                self.mutated |= changed
                self.order, self.cache = [], {}

    def verify(self, t: int, full_logits: torch.Tensor, partial_logits: torch.Tensor) -> bool:
        """Record whether a partial forward of ``t`` reproduced the full forward exactly (see the module doc)."""
        self.verified[t] = bool(torch.equal(full_logits, partial_logits))
        return self.verified[t]
