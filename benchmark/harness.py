"""The harness: runs a suite's cells -- for every defense and trained model, every attack -- and returns their
result records.

It composes three parts that share one :class:`~.context.RunContext` (suite, options, device, processes, dataset,
inputs by content): the :class:`~.deployment.Deployer` trains or loads each defended model per training seed and
quantizes it, :func:`~.evaluate.evaluate_attack` evaluates an attack on it, and the :class:`~.records.RecordStore`
reuses an intact record of the same configuration or writes the new one. :meth:`Harness.preflight` finds bad input
and unwritable folders before any work. Under torchrun the patterns of a cell are sharded across ranks and gathered
on rank 0, which alone writes.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext

from bitbench.attacks.base import Attack
from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import atomic_write_json, check_writable
from bitbench.configs.record import RECORD_FORMAT, ResultRecord
from bitbench.configs.registries import ATTACKS, METRICS, create_attack, create_defense
from bitbench.configs.spec import parse_spec
from bitbench.configs.suite import Suite

from . import builtin_entries  # noqa: F401  (the built-in entries of every registry)
from .context import RunContext, RunOptions, default_cache_dir, device_name, git_revision
from .data import Augment
from .deployment import DeployedModel, Deployer, is_storage_format
from .distributed import DistContext
from .evaluate import AttackEvaluation, evaluate_attack, measure_memory, predict
from .metrics import BUILTIN_METRICS, BUILTIN_NAMES
from .records import RecordStore
from .user_model import SuppliedModel, check_model_fits

__all__ = ["RunOptions", "Harness", "default_cache_dir", "RECORD_FORMAT", "git_revision", "device_name",
           "is_storage_format", "merge_evaluations", "create_metrics"]


def merge_evaluations(parts: list) -> AttackEvaluation:
    """Per-rank shards -> one evaluation with patterns in index order (identical to a single-process run)."""
    p0 = parts[0]
    out = AttackEvaluation(clean_err=p0.clean_err, target=p0.target, clean_nonfinite=p0.clean_nonfinite,
                           clean_values=dict(p0.clean_values))
    out.patterns = sorted((p for ev in parts for p in ev.patterns), key=lambda p: p.index)
    for ev in parts:
        out.traces += ev.traces
        out.decode_seconds += ev.decode_seconds
        out.infer_seconds += ev.infer_seconds
    out.seconds = max(ev.seconds for ev in parts)
    return out


def create_metrics(specs) -> list:
    """The plug-in metrics named by ``specs`` (the built-ins are always measured; a name twice is refused)."""
    out, seen = [], {}
    for spec in specs or ():
        m = None if spec.split(":", 1)[0].strip() in BUILTIN_NAMES else METRICS.create(spec)
        if m is None or m.name in BUILTIN_NAMES:
            raise UsageError(f"metric {spec!r} is measured on every pattern already (built-in metrics: "
                             f"{', '.join(BUILTIN_NAMES)})")
        if m.name in seen:
            raise UsageError(f"metric {m.name!r} is asked for twice ({seen[m.name]!r} and {spec!r})")
        seen[m.name] = spec
        out.append(m)
    return out


class Harness:
    """Runs a suite's cells; see the module docstring."""

    def __init__(self, suite: Suite, options: RunOptions | None = None, dist: DistContext | None = None, *,
                 supplied: SuppliedModel | None = None, dataset=None, metrics=None):
        """``supplied``: evaluate this model instead of training the suite's; ``dataset``: use this
        :class:`~bitbench.data.Dataset` instead of loading the suite's; ``metrics``: plug-in metric specs measured
        besides the built-ins (default: the suite's ``metrics``)."""
        self.ctx = RunContext(suite, options, dist, dataset=dataset)
        self.deployer = Deployer(self.ctx, supplied)
        self.store = RecordStore(self.ctx, self.deployer)
        self.metrics = create_metrics(suite.metrics if metrics is None else metrics)
        self._attacks: dict[str, tuple] = {}  # one attack object per spec (an error map file is read once)
        self._clean: dict = {}  # (defense, training seed, weights) -> clean predictions and metric values

    # -- the shared parts ------------------------------------------------------------------------------------------
    suite = property(lambda self: self.ctx.suite)
    opt = property(lambda self: self.ctx.opt)
    dist = property(lambda self: self.ctx.dist)
    device = property(lambda self: self.ctx.device)
    dataset = property(lambda self: self.ctx.dataset)
    supplied = property(lambda self: self.deployer.supplied)
    model_name = property(lambda self: self.deployer.model_name)

    def log(self, msg: str) -> None:
        self.ctx.log(msg)

    def add_input_file(self, kind: str, role: str, path) -> str:
        return self.ctx.add_input_file(kind, role, path)

    def canonical_defense(self, spec: str) -> str:
        return self.deployer.canonical_defense(spec)

    def model_identity(self, defense, seed: int | None = None) -> dict:
        return self.deployer.model_identity(defense, self.suite.train_seeds[0] if seed is None else seed)

    def checkpoint_path(self, defense, key: str) -> str:
        return self.deployer.checkpoint_path(defense, key)

    def deploy(self, defense_spec: str, seed: int | None = None) -> DeployedModel:
        return self.deployer.deploy(defense_spec, seed)

    def supply_checkpoint(self, path, source: str = "user") -> SuppliedModel:
        return self.deployer.supply_checkpoint(path, source)

    def check_defense(self, defense) -> None:
        self.deployer.check_defense(defense)

    def seeds(self) -> list:
        """The training seeds of the run's models (a supplied model: ``[None]``)."""
        return self.deployer.seeds()

    # -- fail before the work ----------------------------------------------------------------------------------
    def preflight(self, defenses=(), attacks=(), *, results: bool = True) -> None:
        """Find what would fail later before any training or attacking (:class:`UsageError`): the dataset, the
        model and its options, the training and augmentation options, every (defense, attack) pair on the untrained
        model (e.g. ``layers`` patterns), writable cache and results folders with room for the files."""
        dep = self.deployer
        dep.train_config(self.suite.train_seeds[0])
        ds = self.dataset  # a missing or malformed dataset fails here, first
        aug = dep.augment_options()
        if any(aug.values()):
            Augment.from_config(aug, mean=ds.mean)
        try:
            model = dep.build_model()
        except UsageError as e:  # unknown model, norm or model option: name the suite it came from
            where = f"suite {self.suite.name!r}" + (f" ({self.suite.path})" if self.suite.path else "")
            raise UsageError(f"{where}: model {self.suite.model!r} with [model_options] "
                             f"{self.suite.model_options}: {e}") from None
        if self.supplied is None:
            check_model_fits(model, ds, self.suite.model, self.suite.dataset)
        n_params = sum(p.numel() for p in model.parameters())
        # A checkpoint: weights + momentum (float32), twice while the atomic write replaces the old file.
        check_writable(os.path.join(self.opt.cache_dir, "checkpoints"), "cache folder", option="--cache-dir",
                       need_bytes=16 * n_params + (1 << 20))
        if results and self.opt.write_results:
            check_writable(self.opt.results_dir, "results folder", option="--results-dir", need_bytes=1 << 20)
            for d in defenses:
                for a in attacks:
                    for seed in self.seeds():
                        path = self.record_path(d, a, seed)
                        if os.path.isdir(path) and not os.path.islink(path):
                            raise UsageError(f"cannot write the result record {path}: a folder is in its place "
                                             "(move or remove it)")
        # Attacks with model-dependent checks (layers=..., an error map's size) meet each defense's memory layout.
        checks = [a for a in (self.canonical_attack(x)[1] for x in attacks)
                  if getattr(a, "layers", None) is not None or type(a).check is not Attack.check
                  or a.checks_model]
        for d in defenses if checks else ():
            qm = create_defense(self.canonical_defense(d)).quantize(model, trained_here=self.supplied is None)
            for a in checks:
                a.check(qm)
                if a.checks_model:  # module-level checks (activation layers, buffers)
                    a.check_model(qm, model)

    # -- attacks -----------------------------------------------------------------------------------------------
    def canonical_attack(self, spec: str) -> tuple[str, object]:
        """Create the attack; random attacks take the suite's patterns/base_seed unless the spec sets them."""
        if spec not in self._attacks:
            entry, _ = ATTACKS.resolve(spec)
            _, kv = parse_spec(spec)
            # Only where the attack's own default is a number (an error map's 'patterns=None' keeps its meaning).
            over = {k: v for k, v in (("patterns", self.suite.patterns), ("base_seed", self.suite.base_seed))
                    if isinstance(entry.params.get(k), int) and k not in kv}
            attack = create_attack(spec, **over)
            self._attacks[spec] = (attack.spec, attack)
        return self._attacks[spec]

    def record_path(self, defense_spec: str, attack_spec: str, seed: int | None = None) -> str:
        """Where the record of (defense, model of training seed ``seed`` (default the run's first), attack) lives;
        nothing is trained or loaded to say so."""
        if self.supplied is not None:
            seed = None
        elif seed is None:
            seed = self.seeds()[0]
        spec = create_defense(self.canonical_defense(defense_spec)).spec
        return self.store.path_of(spec, seed, self.canonical_attack(attack_spec)[0])

    def cell_hash(self, dep: DeployedModel, attack) -> str:
        return self.store.cell_hash(dep, attack, self.metrics)

    # -- cells -------------------------------------------------------------------------------------------------
    def prepare(self, defense_spec: str) -> None:
        """Train the missing models of a defense's training seeds side by side where the machine has the cores
        (:mod:`.parallel`); later deployments load them."""
        from .parallel import prepare

        prepare(self.deployer, defense_spec)

    def run_cells(self, defense_spec: str, attack_spec: str) -> list[ResultRecord]:
        """One record per trained model (the suite's training seeds) of the cell (defense, attack); missing models
        are trained side by side where the machine has the cores (:mod:`.parallel`)."""
        self.prepare(defense_spec)
        return [self.run_cell(defense_spec, attack_spec, seed=s) for s in self.seeds()]

    def run_cell(self, defense_spec: str, attack_spec: str, *, seed: int | None = None, indices=None,
                 write: bool | None = None) -> ResultRecord:
        """Evaluate one (defense, model, attack); returns its record (reused when already on disk). ``seed``: the
        model's training seed (default: the run's first model)."""
        t_start = time.perf_counter()
        dep = self.deploy(defense_spec, seed)
        aspec, attack = self.canonical_attack(attack_spec)
        chash = self.cell_hash(dep, attack)
        path = self.store.path(dep, aspec)
        write = self.opt.write_results if write is None else write
        if indices is not None:  # a part of the patterns: never read or written as the cell's record
            return self._compute(dep, attack, chash, path, t_start, indices=indices, write=False)
        label = f"{dep.defense.spec} x {aspec}" + ("" if len(self.seeds()) == 1 else f" (model {dep.train_seed})")
        lock = self.ctx.artefact_lock(path, f"the result of {label}") if write else nullcontext()
        with lock:
            if not self.opt.rerun and write:  # without a results folder in use nothing is read from it either
                old = self.dist.broadcast_object(self.store.read(path, chash) if self.dist.is_main else None)
                if old is not None:
                    return old
            return self._compute(dep, attack, chash, path, t_start, indices=None, write=write)

    def _compute(self, dep: DeployedModel, attack, chash: str, path: str, t_start: float, *, indices,
                 write: bool) -> ResultRecord:
        ds = self.dataset
        dev = self.device
        x, y = ds.test_x.to(dev), ds.test_y.to(dev)
        ax, ay = ds.attack_x.to(dev), ds.attack_y.to(dev)
        dist = self.dist
        if dist.enabled and os.environ.get("BITBENCH_INJECT_FAILURE_RANK") == str(dist.rank):
            raise RuntimeError("failure injected by BITBENCH_INJECT_FAILURE_RANK (a test of rank failures)")
        sharded = dist.enabled and indices is None
        if sharded:
            indices = dist.shard(attack.num_perturbations())
        label = dep.defense.spec + ("" if dep.train_seed is None or len(self.seeds()) == 1
                                    else f" [model {dep.train_seed}]")
        ev = evaluate_attack(dep.model, dep.qm, attack, x, y, attack_data=(ax, ay),
                             progress=self.opt.progress and dist.is_main, indices=indices, metrics=self.metrics,
                             desc=f"{label} {attack.spec}", clean=self._clean_measurement(dep, attack, x, y))
        if sharded:
            parts = dist.gather_objects(ev)
            rec = None
            if dist.is_main:
                rec = self.store.build(dep, attack, merge_evaluations(parts), chash, time.perf_counter() - t_start,
                                       self.metrics)
                rec.world_size = dist.world
                if write:
                    atomic_write_json(path, rec.to_json())
                    rec.path = path
            return dist.broadcast_object(rec)
        rec = self.store.build(dep, attack, ev, chash, time.perf_counter() - t_start, self.metrics)
        if write:
            atomic_write_json(path, rec.to_json())
            rec.path = path
        return rec

    def _clean_measurement(self, dep: DeployedModel, attack, x, y):
        """The clean memory's predictions and metric values on the evaluation split, measured once per deployed
        model and shared by its cells (a profile's many cells, a rate sweep); None for an attack with a clean
        baseline of its own (activations quantized), which the evaluator measures itself."""
        if attack.clean_baseline is not None:
            return None
        key = (dep.defense.spec, dep.train_seed, dep.weights_digest)
        if key not in self._clean:
            dep.qm.load_into(dep.model)
            self._clean[key] = measure_memory(dep.model, x, y.reshape(-1), list(BUILTIN_METRICS) + self.metrics)
        return self._clean[key]

    def clean_error(self, defense_spec: str, seed: int | None = None) -> float:
        dep = self.deploy(defense_spec, seed)
        x, y = self.dataset.test_x.to(self.device), self.dataset.test_y.to(self.device)
        dep.qm.load_into(dep.model)
        return (predict(dep.model, x) != y.reshape(-1)).float().mean().item()  # non-finite logits count as errors
