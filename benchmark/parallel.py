"""Training the models of several training seeds side by side: one process per core, one intra-op thread each.

A defense's models of different seeds are independent trainings. On a CPU with more cores than one, the harness
trains the seeds whose checkpoints are missing in worker processes (``spawn``, one per core, each at the recipe's
thread count, which is part of the checkpoint key) that write the checkpoints exactly as a sequential run would: same
key, same atomic write, same lock; the main process then loads and verifies them. The weights are bit-identical to
training the seeds one after the other (a test checks it). Not used under torchrun (every rank takes part in one
training there), on a GPU, for a supplied model, or with a dataset given as tensors; ``BITBENCH_TRAIN_WORKERS=N``
sets the number of processes (1: sequential).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
import os
import time

from bitbench.configs.errors import UsageError
from bitbench.configs.suite import Suite

__all__ = ["prepare", "train_side_by_side", "workers_for"]


def workers_for(ctx, n: int) -> int:
    """How many worker processes may train ``n`` missing models (1: train in this process)."""
    text = os.environ.get("BITBENCH_TRAIN_WORKERS", "").strip()
    if text:
        try:
            cap = int(text)
        except ValueError:
            cap = 0
        if cap < 1:
            raise UsageError(f"environment variable BITBENCH_TRAIN_WORKERS={text!r} must be an integer >= 1 (or "
                             "unset)")
    else:
        cap = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if ctx.device.type != "cpu" or ctx.dist.enabled or ctx.given_dataset:
        return 1
    return max(1, min(n, cap))


class _Prefixed:
    """A text stream that starts every line written to ``stream`` with ``prefix`` (a worker's epoch lines)."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix = stream, prefix

    def write(self, text: str) -> int:
        lines = text.splitlines(keepends=True)
        self.stream.write("".join(self.prefix + line if line.strip() else line for line in lines))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def _train_one(suite: dict, suite_path, options: dict, spec: str, seed: int, epoch_lines: bool) -> tuple[int, float]:
    """Worker: train (or find) the checkpoint of ``spec`` for ``seed`` as the sequential harness would.

    With ``epoch_lines`` (the parent shows progress and its stderr is not a terminal) the training prints its one
    line per finished epoch, each starting with ``[spec seed k] ``; its other messages stay in the parent, warnings
    excepted."""
    import sys

    from .context import RunContext, RunOptions
    from .deployment import Deployer

    stderr = sys.stderr  # a worker process trains several seeds one after the other: restore it after each
    if epoch_lines:
        sys.stderr = _Prefixed(stderr, f"[{spec} seed {seed}] ")
        options = dict(options, progress=True)

    def log(msg: str) -> None:
        if msg.startswith("warning:"):
            print(msg, file=sys.stderr, flush=True)

    opt = RunOptions(**options)
    opt.log = log
    try:
        ctx = RunContext(Suite(**suite, path=suite_path), opt)
        t0 = time.perf_counter()
        Deployer(ctx).deploy(spec, seed)
        return seed, time.perf_counter() - t0
    finally:
        sys.stderr = stderr


def prepare(deployer, defense_spec: str) -> None:
    """Train the run's missing models of a defense side by side where the machine allows; the deployer then loads
    them (``deployer.deploy``)."""
    base = deployer.base_to_prepare(defense_spec)
    if base is not None:
        deployer.trained_elsewhere(base, train_side_by_side(deployer, base, deployer.seeds()))


def train_side_by_side(deployer, spec: str, seeds: list) -> set:
    """Train the models of ``seeds`` whose checkpoints are missing in worker processes; returns the seeds trained
    there (empty when one process suffices: the caller trains as usual)."""
    ctx = deployer.ctx
    missing = [s for s in seeds if not deployer.checkpoint_ready(spec, s)]
    n = workers_for(ctx, len(missing)) if len(missing) > 1 else 1
    if n <= 1:
        return set()
    fields = {f.name for f in dataclasses.fields(ctx.opt)}
    options = {k: getattr(ctx.opt, k) for k in fields}
    options.update(progress=False, device="cpu")
    epoch_lines = bool(ctx.opt.progress and ctx.opt.log is None and ctx.dist.is_main and not _stderr_is_tty())
    suite = ctx.suite.to_dict()
    ctx.log(f"[{spec}] training the models of seeds {', '.join(map(str, missing))} side by side: {n} processes, "
            "one core each")
    done = set()
    with cf.ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, suite, ctx.suite.path, options, spec, s, epoch_lines): s for s in missing}
        try:
            for f in cf.as_completed(futures):
                try:
                    seed, seconds = f.result()
                except Exception as e:  # noqa: BLE001 -- e.g. a model or defense registered only in this process
                    ctx.log(f"[{spec} seed {futures[f]}] not trained in a worker ({type(e).__name__}: {e}); "
                            "training it in this process")
                    continue
                done.add(seed)
                ctx.log(f"[{spec} seed {seed}] trained ({seconds:.1f} s)")
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return done


def _stderr_is_tty() -> bool:
    import sys

    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False
