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

__all__ = ["train_side_by_side", "workers_for"]


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


def _train_one(suite: dict, suite_path, options: dict, spec: str, seed: int) -> tuple[int, float]:
    """Worker: train (or find) the checkpoint of ``spec`` for ``seed`` as the sequential harness would."""
    from .context import RunContext, RunOptions
    from .deployment import Deployer

    opt = RunOptions(**options)
    ctx = RunContext(Suite(**suite, path=suite_path), opt)
    t0 = time.perf_counter()
    Deployer(ctx).deploy(spec, seed)
    return seed, time.perf_counter() - t0


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
    suite = ctx.suite.to_dict()
    ctx.log(f"[{spec}] training the models of seeds {', '.join(map(str, missing))} side by side: {n} processes, "
            "one core each")
    done = set()
    with cf.ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, suite, ctx.suite.path, options, spec, s): s for s in missing}
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
