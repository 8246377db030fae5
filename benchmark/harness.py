"""The harness: train (or load) a defended model, quantize it, attack it, evaluate, write result records.

Checkpoints are keyed by everything that determines the trained weights (dataset, architecture and options,
defense spec and its scheme, training recipe, augmentation, seed, code version): a changed configuration never
loads a stale file. Training checkpoints are written atomically every epoch and resume. Result records are written
atomically as each (defense, attack) finishes; a rerun reuses records whose configuration hash matches.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import atomic_write_json
from bitbench.configs.record import RECORD_FORMAT, RecordError, ResultRecord
from bitbench.configs.registries import ATTACKS, DEFENSES, create_attack, create_defense
from bitbench.configs.spec import format_spec, parse_spec
from bitbench.configs.suite import Suite, stable_hash
from bitbench.defenses import TrainConfig
from bitbench.defenses.quantized_model import flatten_parameters

from . import __version__
from .data import Augment, load_dataset
from .distributed import DistContext
from .evaluate import AttackEvaluation, evaluate_attack, predict
from .models import build_model

__all__ = ["RunOptions", "Harness", "default_cache_dir", "RECORD_FORMAT", "git_revision", "device_name"]


def default_cache_dir() -> str:
    """``$BITBENCH_CACHE``, else ``$XDG_CACHE_HOME/bitbench``, else ``~/.cache/bitbench``."""
    if os.environ.get("BITBENCH_CACHE"):
        return os.environ["BITBENCH_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bitbench")


_GIT_REV: list = []


def git_revision() -> str | None:
    """The git revision of the code (None when not in a git checkout)."""
    if not _GIT_REV:
        here = os.path.dirname(os.path.abspath(__file__))
        try:
            rev = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=5).stdout.strip() or None
            if rev:
                dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                rev += "-dirty" if dirty else ""
        except (OSError, subprocess.SubprocessError):
            rev = None
        _GIT_REV.append(rev)
    return _GIT_REV[0]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"invalid device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return dev


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "._-=" else "_" for c in spec.replace(":", "__").replace(",", "_"))


@dataclass
class RunOptions:
    cache_dir: str = field(default_factory=default_cache_dir)
    results_dir: str = "results"
    device: str = "auto"
    progress: bool = True
    retrain: bool = False       # ignore a cached checkpoint
    rerun: bool = False         # ignore matching result records
    data_dir: str | None = None
    write_results: bool = True
    log = None                  # callable(str) for messages (stderr by default)


@dataclass
class DeployedModel:
    defense: object
    model: torch.nn.Module
    qm: object
    key: str
    train_seconds: float
    trained_now: bool
    history: list


def _read_record(path: str, chash: str) -> ResultRecord | None:
    """The record at ``path`` if it exists, is a valid record and was computed with configuration hash ``chash``."""
    try:
        with open(path) as f:
            rec = ResultRecord.from_json(json.load(f), source=path)
    except (OSError, json.JSONDecodeError, RecordError):
        return None
    if rec.config_hash != chash:
        return None
    rec.cached, rec.path = True, path
    return rec


def merge_evaluations(parts: list) -> "AttackEvaluation":
    """Per-rank shards -> one evaluation with patterns in index order (identical to a single-process run)."""
    out = AttackEvaluation(clean_err=parts[0].clean_err, target=parts[0].target)
    out.patterns = sorted((p for ev in parts for p in ev.patterns), key=lambda p: p.index)
    for ev in parts:
        out.traces += ev.traces
    out.seconds = max(ev.seconds for ev in parts)
    return out


class Harness:
    """Runs a suite's (defense, attack) cells; see the module docstring."""

    def __init__(self, suite: Suite, options: RunOptions | None = None, dist: DistContext | None = None):
        self.suite = suite
        self.opt = options or RunOptions()
        self.dist = dist or DistContext()
        self.device = resolve_device(self.opt.device)
        self._dataset = None
        self._deployed: dict[str, DeployedModel] = {}
        self._eval_cache: dict[str, tuple] = {}

    def log(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self.opt.log is not None:
            self.opt.log(msg)
        elif self.opt.progress:
            print(msg, file=sys.stderr)

    # -- data --------------------------------------------------------------------------------------------------
    @property
    def dataset(self):
        if self._dataset is None:
            self._dataset = load_dataset(self.suite.dataset, self.opt.data_dir or self.suite.data_dir,
                                         n_eval=self.suite.n_eval)
        return self._dataset

    def eval_split(self) -> str:
        """``test[0:N]``: the first N images of the dataset's test split (its rule is in ``eval_split_rule``)."""
        return f"test[0:{self.dataset.test_y.shape[0]}]"

    def train_config(self) -> TrainConfig:
        d = dict(self.suite.train)
        d.setdefault("seed", self.suite.train_seed)
        d["device"] = str(self.device)
        d["progress"] = self.opt.progress
        return TrainConfig.from_dict(d)

    def augment_options(self) -> dict:
        a = dict(self.suite.augment)
        if a.get("autoaugment") == "if-available":
            try:
                import torchvision  # noqa: F401
                a["autoaugment"] = True
            except Exception:
                a["autoaugment"] = False
        return a

    # -- defenses ----------------------------------------------------------------------------------------------
    def canonical_defense(self, spec: str) -> str:
        """Canonical spec; the suite's ``bits`` applies unless the spec sets bits itself."""
        entry, params = DEFENSES.resolve(spec)
        _, kv = parse_spec(spec)
        if "bits" in entry.params and "bits" not in kv:
            params["bits"] = self.suite.bits
        return format_spec(entry.name, params, entry.params)

    def model_identity(self, defense) -> dict:
        ds = self.dataset
        return {"dataset": self.suite.dataset, "data": {k: ds.info.get(k) for k in ("n_train", "source")},
                "n_train": int(ds.train_y.shape[0]), "model": self.suite.model,
                "model_options": self.suite.model_options, "defense": defense.identity(),
                "train": self.train_config().identity(), "augment": self.augment_options(),
                "version": __version__}

    def build_model(self):
        ds = self.dataset
        opts = dict(self.suite.model_options)
        return build_model(self.suite.model, num_classes=ds.num_classes, in_channels=ds.train_x.shape[1],
                           image_size=ds.train_x.shape[-1], mean=ds.mean, std=ds.std, seed=self.suite.train_seed,
                           **opts)

    def checkpoint_path(self, defense, key: str) -> str:
        return os.path.join(self.opt.cache_dir, "checkpoints", self.suite.dataset, self.suite.model,
                            f"{_slug(defense.spec)}-{key}.pt")

    def deploy(self, defense_spec: str) -> DeployedModel:
        """Train (or load the cached checkpoint of) the defended model and quantize it."""
        spec = self.canonical_defense(defense_spec)
        if spec in self._deployed:
            return self._deployed[spec]
        defense = create_defense(spec)
        ds = self.dataset
        key = stable_hash(self.model_identity(defense))
        path = self.checkpoint_path(defense, key)
        cfg = self.train_config()
        model = self.build_model()
        t0 = time.perf_counter()
        trained_now = False
        if self.opt.retrain and os.path.exists(path):
            os.unlink(path)
        ckpt = None
        if os.path.exists(path):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("key") != key:
                ckpt = None
        if ckpt is not None and int(ckpt.get("epoch", -1)) >= cfg.epochs:
            model.load_state_dict(ckpt["model"])
            model.to(self.device)
            history = list(ckpt.get("history", []))
            self.log(f"[{spec}] loaded checkpoint {path}")
        else:
            resumed = f" (resuming at epoch {int(ckpt['epoch']) + 1})" if ckpt is not None else ""
            self.log(f"[{spec}] training {self.suite.model} on {self.suite.dataset} for {cfg.epochs} epochs"
                     f"{resumed} on {self.device}")
            aug_opts = self.augment_options()
            augment = Augment.from_config(aug_opts) if any(aug_opts.values()) else None
            history = defense.train(model, ds.train_x, ds.train_y, cfg, augment=augment,
                                    num_classes=ds.num_classes, checkpoint=path, key=key, wrap=self._ddp_wrap())
            trained_now = True
        train_s = time.perf_counter() - t0
        if trained_now:
            train_s = sum(h.get("seconds", 0.0) for h in history) or train_s
        model.eval()
        qm = defense.quantize(model)
        # The per-chip loop dequantizes each pattern straight into one flat parameter buffer (one pass).
        flatten_parameters(qm.parameters_of(model))
        dep = DeployedModel(defense, model, qm, key, train_s, trained_now, history)
        self._deployed[spec] = dep
        return dep

    def _ddp_wrap(self):
        """DistributedDataParallel under torchrun (None in a single process)."""
        if not self.dist.enabled:
            return None
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = self.device

        def wrap(m):
            return DDP(m, device_ids=[dev.index] if dev.type == "cuda" else None)

        return wrap

    # -- attacks -----------------------------------------------------------------------------------------------
    def canonical_attack(self, spec: str) -> tuple[str, object]:
        """Create the attack; random attacks take the suite's patterns/base_seed unless the spec sets them."""
        entry, params = ATTACKS.resolve(spec)
        _, kv = parse_spec(spec)
        # Only where the attack's own default is a number (an error map's 'patterns=None' keeps its meaning).
        over = {k: v for k, v in (("patterns", self.suite.patterns), ("base_seed", self.suite.base_seed))
                if isinstance(entry.params.get(k), int) and k not in kv}
        attack = create_attack(spec, **over)
        return attack.spec, attack

    def record_path(self, defense_spec: str, attack_spec: str) -> str:
        return os.path.join(self.opt.results_dir, self.suite.name, self.suite.model, _slug(defense_spec),
                            _slug(attack_spec) + ".json")

    def cell_hash(self, dep: DeployedModel, attack) -> str:
        return stable_hash({"model_key": dep.key, "attack": attack.spec, "attack_params": attack.params,
                            "eval_split": self.eval_split(), "n_eval": int(self.dataset.test_y.shape[0]),
                            "version": __version__})

    def _eval_tensors(self):
        if "x" not in self._eval_cache:
            ds = self.dataset
            self._eval_cache["x"] = (ds.test_x.to(self.device), ds.test_y.to(self.device))
            self._eval_cache["a"] = (ds.attack_x.to(self.device), ds.attack_y.to(self.device))
        return self._eval_cache["x"], self._eval_cache["a"]

    def run_cell(self, defense_spec: str, attack_spec: str, *, indices=None,
                 write: bool | None = None) -> ResultRecord:
        """Evaluate one (defense, attack) cell; returns the result record (reused when already on disk)."""
        t_start = time.perf_counter()
        dep = self.deploy(defense_spec)
        aspec, attack = self.canonical_attack(attack_spec)
        chash = self.cell_hash(dep, attack)
        path = self.record_path(dep.defense.spec, aspec)
        write = self.opt.write_results if write is None else write
        if not self.opt.rerun and indices is None:
            old = self.dist.broadcast_object(_read_record(path, chash) if self.dist.is_main else None)
            if old is not None:
                return old
        (x, y), (ax, ay) = self._eval_tensors()
        dist = self.dist
        if dist.enabled and os.environ.get("BITBENCH_INJECT_FAILURE_RANK") == str(dist.rank):
            raise RuntimeError("failure injected by BITBENCH_INJECT_FAILURE_RANK (a test of rank failures)")
        if dist.enabled and indices is None:
            indices = dist.shard(attack.num_perturbations())
            sharded = True
        else:
            sharded = False
        ev = evaluate_attack(dep.model, dep.qm, attack, x, y, attack_data=(ax, ay),
                             progress=self.opt.progress and dist.is_main, indices=indices,
                             desc=f"{dep.defense.spec} {aspec}")
        if sharded:
            parts = dist.gather_objects(ev)
            rec = None
            if dist.is_main:
                ev = merge_evaluations(parts)
                rec = self.make_record(dep, attack, ev, chash, time.perf_counter() - t_start)
                rec.world_size = dist.world
                if write:
                    atomic_write_json(path, rec.to_json())
                    rec.path = path
            rec = dist.broadcast_object(rec)
            return rec
        rec = self.make_record(dep, attack, ev, chash, time.perf_counter() - t_start)
        if write and indices is None:
            atomic_write_json(path, rec.to_json())
            rec.path = path
        return rec

    def make_record(self, dep: DeployedModel, attack, ev, chash: str, total_s: float) -> ResultRecord:
        ds = self.dataset
        d = dep.defense
        rate = getattr(attack, "rate", None)
        return ResultRecord(
            suite=self.suite.name, dataset=self.suite.dataset, eval_split=self.eval_split(),
            eval_split_rule=ds.info.get("eval_split"), n_eval=int(ds.test_y.shape[0]), model=self.suite.model,
            model_options=dict(self.suite.model_options), n_params=int(dep.qm.n_words),
            defense=d.spec, defense_name=d.registry_name, defense_params=dict(d.params),
            bits=int(dep.qm.bits), scheme=dep.qm.scheme.name,
            attack=attack.spec, attack_name=attack.registry_name, attack_params=dict(attack.params),
            attack_kind=getattr(attack, "kind", None), rate=None if rate is None else float(rate),
            flips=getattr(attack, "flips", None), clean_err=ev.clean_err, patterns=list(ev.patterns),
            train_seed=self.suite.train_seed, version=__version__, git_rev=git_revision(), config_hash=chash,
            device=device_name(self.device),
            timings={"train": dep.train_seconds, "trained_now": dep.trained_now, "attack_eval": ev.seconds,
                     "total": total_s},
            date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            trace=(ev.traces[0] if len(ev.traces) == 1 else ev.traces) if ev.traces else None, target=ev.target)

    def clean_error(self, defense_spec: str) -> float:
        dep = self.deploy(defense_spec)
        (x, y), _ = self._eval_tensors()
        dep.qm.load_into(dep.model)
        return (predict(dep.model, x) != y).float().mean().item()
