"""The harness: train (or load) a defended model, quantize it, attack it, evaluate, write result records.

Checkpoints are keyed by everything that determines the trained weights (the training data by content digest,
architecture and options, defense spec and its scheme, training recipe, augmentation, seed, code version): a
changed configuration never loads a stale file. Training checkpoints are written atomically every epoch, carry a
content digest verified on every load, and resume; a damaged one is reported and trained again, never used. Result
records are written atomically as each (defense, attack) finishes; a rerun reuses records whose configuration hash
(which includes the digest of the deployed weights and of every input file) and content digest match; an edited or
damaged record is reported and recomputed. A file lock per artefact (``<file>.lock``) makes concurrent identical
runs compute each checkpoint and record once. :meth:`Harness.preflight` finds bad input and unwritable folders
before any work.

A *supplied* model (:class:`~bitbench.user_model.SuppliedModel`: the user's module or checkpoint, or a leaderboard
entry's checkpoint) is never trained: each defense spec names the storage format it is quantized in. For a user's
model only formats qualify (a training recipe such as clip or randbet is refused: its weights did not come from it);
for an entry's checkpoint, trained here with the entry's defense, that defense's scheme applies. Its configuration
hash holds the weights' digest, the checkpoint file's SHA-256 and the digest of the evaluation and attacker images.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from bitbench.attacks.base import Attack
from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import atomic_write_json, check_writable, sha256_file
from bitbench.configs.lock import FileLock
from bitbench.configs.record import RECORD_FORMAT, RecordError, ResultRecord
from bitbench.configs.registries import ATTACKS, DEFENSES, PROTECTIONS, create_attack, create_defense
from bitbench.configs.spec import format_spec, join_stages, parse_spec, split_stages
from bitbench.configs.suite import Suite, stable_hash
from bitbench.defenses import TrainConfig
from bitbench.defenses.io import CheckpointError, load_checkpoint, payload_digest
from bitbench.defenses.protection import ProtectedModel
from bitbench.defenses.quantized_model import QuantizedModel, flatten_parameters
from bitbench.defenses.training import CHECKPOINT_FORMAT

from . import __version__
from .data import Augment, load_dataset, reads_local_files
from .distributed import DistContext
from .evaluate import AttackEvaluation, evaluate_attack, predict
from .models import build_model
from .user_model import SuppliedModel, supplied_model, tensor_digest

__all__ = ["RunOptions", "Harness", "default_cache_dir", "RECORD_FORMAT", "git_revision", "device_name",
           "is_storage_format"]


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
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UsageError(f"invalid device {name!r}; use cpu, cuda, cuda:N or auto")
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


def is_storage_format(defense) -> bool:
    """A defense that is only a storage format (:attr:`Defense.storage_format`: QAT with its scheme and at most the
    paper's clip at 1; no other clip, no own training step or loop). Only these apply to a model the benchmark did
    not train, stored with :meth:`Defense.storage_scheme`."""
    from bitbench.defenses.base import Defense

    defense = getattr(defense, "base", defense)  # a protected defense is stored as its base
    cls = type(defense)
    return (bool(getattr(defense, "storage_format", False)) and cls.make_step is Defense.make_step
            and cls.train is Defense.train and cls.trainer is Defense.trainer)


@dataclass
class DeployedModel:
    defense: object
    model: torch.nn.Module
    qm: object
    key: str
    train_seconds: float
    trained_now: bool
    history: list
    weights_digest: str = ""   # payload digest of the quantized model (codes + contexts)
    weights: dict | None = None       # the float weights before quantization (CPU state dict; trained models)
    weights_sha256: str | None = None  # tensor_digest of the float weights (trained or supplied)


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def merge_evaluations(parts: list) -> "AttackEvaluation":
    """Per-rank shards -> one evaluation with patterns in index order (identical to a single-process run)."""
    out = AttackEvaluation(clean_err=parts[0].clean_err, target=parts[0].target,
                           clean_nonfinite=parts[0].clean_nonfinite)
    out.patterns = sorted((p for ev in parts for p in ev.patterns), key=lambda p: p.index)
    for ev in parts:
        out.traces += ev.traces
        out.decode_seconds += ev.decode_seconds
        out.infer_seconds += ev.infer_seconds
    out.seconds = max(ev.seconds for ev in parts)
    return out


class Harness:
    """Runs a suite's (defense, attack) cells; see the module docstring."""

    def __init__(self, suite: Suite, options: RunOptions | None = None, dist: DistContext | None = None, *,
                 supplied: SuppliedModel | None = None, dataset=None):
        """``supplied``: evaluate this model instead of training the suite's (see the module docstring);
        ``dataset``: use this :class:`~bitbench.data.Dataset` instead of loading the suite's."""
        self.suite = suite
        self.opt = options or RunOptions()
        self.dist = dist or DistContext()
        self.device = resolve_device(self.opt.device)
        self.supplied = supplied
        self._dataset = dataset
        self._deployed: dict[str, DeployedModel] = {}
        self._eval_cache: dict[str, tuple] = {}
        self._digests: dict[tuple, str] = {}
        self._attacks: dict[str, tuple] = {}  # one attack object per spec (an error map file is read once)
        self._input_files: dict[str, dict] = {"model": {}, "cell": {}}
        where = ("--data-dir " + self.opt.data_dir if self.opt.data_dir else
                 f"data_dir = {suite.data_dir!r} in the suite file" if suite.data_dir else None)
        if where and dataset is None and not reads_local_files(suite.dataset):
            raise UsageError(f"{where}: dataset {suite.dataset!r} of suite {suite.name!r} is built in and reads "
                             "no local files, so the folder would be ignored; drop it, or use a suite whose "
                             "dataset is read from files (mnist, cifar10, cifar100, or dataset = \"npz\"/\"h5\" "
                             "in a suite file)")

    def log(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self.opt.log is not None:
            self.opt.log(msg)
        elif self.opt.progress:
            print(msg, file=sys.stderr)

    def warn(self, msg: str) -> None:
        """A problem the run works around (a damaged file it does not use): shown even without progress output."""
        if not self.dist.is_main:
            return
        if self.opt.log is not None:
            self.opt.log(f"warning: {msg}")
        else:
            print(f"warning: {msg}", file=sys.stderr)

    @contextmanager
    def _artefact_lock(self, path: str, what: str):
        """Hold ``<path>.lock`` while an artefact is looked up and computed (rank 0 for all ranks under torchrun)."""
        lock = FileLock(path + ".lock", what, log=self.log).acquire() if self.dist.is_main else None
        self.dist.barrier()
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    # -- fail before the work ----------------------------------------------------------------------------------
    def preflight(self, defenses=(), attacks=(), *, results: bool = True) -> None:
        """Find what would fail later before any training or attacking (:class:`UsageError`): the dataset, the
        model and its options, the training and augmentation options, every (defense, attack) pair on the untrained
        model (e.g. ``layers`` patterns), writable cache and results folders with room for the files."""
        self.train_config()
        ds = self.dataset  # a missing or malformed dataset fails here, first
        aug = self.augment_options()
        if any(aug.values()):
            Augment.from_config(aug, mean=ds.mean)
        try:
            model = self.build_model()
        except UsageError as e:  # unknown model, norm or model option: name the suite it came from
            where = f"suite {self.suite.name!r}" + (f" ({self.suite.path})" if self.suite.path else "")
            raise UsageError(f"{where}: model {self.suite.model!r} with [model_options] "
                             f"{self.suite.model_options}: {e}") from None
        n_params = sum(p.numel() for p in model.parameters())
        # A checkpoint: weights + momentum (float32), twice while the atomic write replaces the old file.
        check_writable(os.path.join(self.opt.cache_dir, "checkpoints"), "cache folder", option="--cache-dir",
                       need_bytes=16 * n_params + (1 << 20))
        if results and self.opt.write_results:
            check_writable(self.opt.results_dir, "results folder", option="--results-dir", need_bytes=1 << 20)
        # Attacks with model-dependent checks (layers=..., an error map's size) meet each defense's memory layout.
        checks = [a for a in (self.canonical_attack(x)[1] for x in attacks)
                  if getattr(a, "layers", None) is not None or type(a).check is not Attack.check]
        for d in defenses if checks else ():
            qm = create_defense(self.canonical_defense(d)).quantize(model)
            for a in checks:
                a.check(qm)

    # -- inputs by content ---------------------------------------------------------------------------------------
    def _data_digest(self, *splits: str) -> str:
        if splits not in self._digests:
            self._digests[splits] = self.dataset.digest(*splits)
        return self._digests[splits]

    def add_input_file(self, kind: str, role: str, path) -> str:
        """Declare a file behind every model (``kind='model'``, e.g. a user's checkpoint) or every cell
        (``kind='cell'``): its content digest joins :meth:`input_digests` under ``role``. Returns the digest."""
        if kind not in self._input_files:
            raise ValueError(f"kind must be 'model' or 'cell', got {kind!r}")
        try:
            digest = "sha256:" + sha256_file(path)
        except OSError as e:
            raise UsageError(f"{role} {path}: cannot read it ({e.strerror or e})") from None
        self._input_files[kind][role] = digest
        return digest

    def input_digests(self, kind: str, obj=None) -> dict:
        """``{role: "sha256:..."}``: content digests of the inputs behind the numbers, which enter the configuration
        hashes instead of any path. ``kind='model'``: the training data, files declared with
        :meth:`add_input_file` and files named by the defense ``obj``'s parameters; ``kind='cell'``: the evaluation
        and attacker data, declared files and files named by the attack ``obj``'s parameters (an error map's
        ``file``). Objects declare their files with ``input_digests()``."""
        if kind == "model":
            out, prefix = {"data.train": self._data_digest("train")}, "defense"
        else:
            out, prefix = {"data.eval": self._data_digest("test"), "data.attack": self._data_digest("attack")}, \
                "attack"
        out.update(self._input_files[kind])
        own = getattr(obj, "input_digests", None)
        for k, v in (own() if own is not None else {}).items():
            out[f"{prefix}.{k}"] = v
        return out

    @staticmethod
    def _hashed_params(obj, digests: dict, prefix: str) -> dict:
        """``obj.params`` with every file parameter replaced by its content digest (never hashed by path)."""
        return {k: digests.get(f"{prefix}.{k}", v) for k, v in dict(getattr(obj, "params", {})).items()}

    # -- data --------------------------------------------------------------------------------------------------
    @property
    def dataset(self):
        if self._dataset is None:
            self._dataset = load_dataset(self.suite.dataset, self.opt.data_dir or self.suite.data_dir,
                                         n_eval=self.suite.n_eval)
        return self._dataset

    def data_digest(self) -> str:
        """Content digest (:meth:`Dataset.digest`) of the evaluation and attacker images and labels: what a supplied
        model's results depend on."""
        return self._data_digest("test", "attack")

    def eval_split(self) -> str:
        """``test[0:N]``: the first N images of the dataset's test split (its rule is in ``eval_split_rule``)."""
        return f"test[0:{self.dataset.test_y.shape[0]}]"

    def train_config(self) -> TrainConfig:
        d = dict(self.suite.train)
        d["seed"] = self.suite.train_seed
        d["device"] = str(self.device)
        d["progress"] = self.opt.progress
        return TrainConfig.from_dict(d)

    def augment_options(self) -> dict:
        a = dict(self.suite.augment)
        if a.get("autoaugment") == "if-available":  # older suites; AutoAugment is plain torch now
            a["autoaugment"] = True
        return a

    def recipe(self, defense) -> dict:
        """The training recipe of a cell's model (the defense's, plus augmentation) for the result record; for a
        supplied model only its storage scheme (nothing of the recipe was applied)."""
        if self.supplied is not None and self.supplied.source == "user":
            return defense.supplied_recipe()
        d = defense.recipe()
        aug = {k: v for k, v in self.augment_options().items() if v not in (None, False, 0)}
        if aug:
            d["augment"] = aug
            if aug.get("fill", "mean") != "mean":
                d["deviations"] = d["deviations"] + [f"augmentation fills with {aug['fill']!r} (the paper: the "
                                                     "dataset mean)"]
        return d

    # -- defenses ----------------------------------------------------------------------------------------------
    def canonical_defense(self, spec: str) -> str:
        """Canonical spec; the suite's ``bits`` applies unless the spec sets bits itself (or the defense's ``bits``
        is not a width: the float formats' ``bits`` names the fields that may flip). Protections after ``+`` keep
        their order (``rquant+secded:word=32``)."""
        entry, params = DEFENSES.resolve(spec)
        base, stages = split_stages(spec)
        _, kv = parse_spec(base)
        default = entry.params.get("bits")
        if isinstance(default, int) and not isinstance(default, bool) and "bits" not in kv:
            params["bits"] = self.suite.bits
        return join_stages(format_spec(entry.name, params, entry.params), [PROTECTIONS.canonical(s) for s in stages])

    @property
    def model_name(self) -> str:
        return self.supplied.name if self.supplied is not None else self.suite.model

    def model_identity(self, defense) -> dict:
        if self.supplied is not None:
            sm = self.supplied
            return {"model_source": sm.source, "model": sm.name, "model_options": sm.options,
                    "weights_sha256": sm.weights_sha256, "checkpoint_sha256": sm.checkpoint_sha256,
                    "data": {"dataset": self.suite.dataset, "sha256": self.data_digest()},
                    "defense": defense.identity(), "version": __version__}
        ds = self.dataset
        digests = self.input_digests("model", defense)
        ident = defense.identity()
        if "params" in ident:
            ident = dict(ident, params=self._hashed_params(defense, digests, "defense"))
        return {"dataset": self.suite.dataset, "inputs": digests, "n_train": int(ds.train_y.shape[0]),
                "model": self.suite.model, "model_options": self.suite.model_options, "defense": ident,
                "train": self.train_config().identity(), "augment": self.augment_options(),
                "version": __version__}

    def build_model(self):
        ds = self.dataset
        opts = dict(self.suite.model_options)
        return build_model(self.suite.model, num_classes=ds.num_classes, in_channels=ds.train_x.shape[1],
                           image_size=ds.train_x.shape[-1], mean=ds.mean, std=ds.std, seed=self.suite.train_seed,
                           **opts)

    def checkpoint_path(self, defense, key: str) -> str:
        """``<cache>/checkpoints/<dataset>/<model>/<name>-<key>.pt``: ``name`` is the defense's ``checkpoint_name``
        (formats that store one trained model share it: ``float``), else its spec."""
        name = getattr(defense, "checkpoint_name", None) or defense.spec
        return os.path.join(self.opt.cache_dir, "checkpoints", _slug(self.suite.dataset), _slug(self.suite.model),
                            f"{_slug(name)}-{key}.pt")

    def check_defense(self, defense) -> None:
        """Refuse a training recipe for a user's model (see :func:`is_storage_format`)."""
        if self.supplied is not None and self.supplied.source == "user" and not is_storage_format(defense):
            raise UsageError(
                f"defense {defense.spec!r} is a training recipe (weight clipping or its own training step), but the "
                f"model {self.supplied.name} was supplied, not trained here: a supplied model's defense spec names "
                "only the storage format. Use a format such as normal, rquant or quant:bits=4 (a recipe applies "
                "only to a model the benchmark trains)")

    def supply_checkpoint(self, path, source: str = "user") -> SuppliedModel:
        """Evaluate the weights in the checkpoint file ``path`` on the suite's architecture (model and options,
        built for the dataset) instead of training it; see :func:`~bitbench.user_model.supplied_model`."""
        self.supplied = supplied_model(self.build_model(), name=self.suite.model, options=self.suite.model_options,
                                       checkpoint=path, source=source)
        self._deployed.clear()
        return self.supplied

    def deploy(self, defense_spec: str) -> DeployedModel:
        """Train (or load the cached, verified checkpoint of) the defended model and quantize it; a supplied model
        is only quantized."""
        spec = self.canonical_defense(defense_spec)
        if spec in self._deployed:
            return self._deployed[spec]
        defense = create_defense(spec)
        if hasattr(defense, "protect_memory"):  # trained (or supplied) as its base; only the memory is protected
            base = self.deploy(defense.base.spec)
            qm = defense.protect_memory(base.qm)
            self.log(f"[{spec}] {qm.spec}: {qm.check_bits} check bits for {qm.data_bits} data bits "
                     f"(+{100 * qm.memory_overhead:.2f}% memory)")
            dep = DeployedModel(defense, base.model, qm, base.key, base.train_seconds, base.trained_now,
                                base.history, base.weights_digest, base.weights, base.weights_sha256)
            self._deployed[spec] = dep
            return dep
        if self.supplied is not None:
            return self._deploy_supplied(spec, defense)
        ds = self.dataset
        key = stable_hash(self.model_identity(defense))
        path = self.checkpoint_path(defense, key)
        cfg = self.train_config()
        model = self.build_model()
        t0 = time.perf_counter()
        trained_now = False
        with self._artefact_lock(path, f"the checkpoint of {spec}"):
            if self.opt.retrain:
                if self.dist.is_main:
                    _discard(path)
                self.dist.barrier()
            ckpt = self._read_checkpoint(path, key, spec)
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
                augment = Augment.from_config(aug_opts, mean=ds.mean) if any(
                    v for k, v in aug_opts.items() if k != "fill") else None
                history = defense.train(model, ds.train_x, ds.train_y, cfg, augment=augment,
                                        num_classes=ds.num_classes, checkpoint=path, key=key, wrap=self._ddp_wrap())
                trained_now = True
        train_s = time.perf_counter() - t0
        if trained_now:
            train_s = sum(h.get("seconds", 0.0) for h in history) or train_s
        model.eval()
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        qm = defense.quantize(model)
        # The per-chip loop dequantizes each pattern straight into one flat parameter buffer (one pass).
        flatten_parameters(qm.parameters_of(model))
        dep = DeployedModel(defense, model, qm, key, train_s, trained_now, history, payload_digest(qm.state_dict()),
                            weights, tensor_digest(weights))
        self._deployed[spec] = dep
        return dep

    def _read_checkpoint(self, path: str, key: str, spec: str) -> dict | None:
        """The verified checkpoint of ``key`` at ``path`` (None if absent). Anything else there -- damaged,
        unreadable, of another format or configuration -- is reported, removed and never used."""
        if not os.path.exists(path):
            return None
        try:
            d = load_checkpoint(path, hint="it is not used: the model is trained again and the file replaced "
                                           "(--retrain does this on purpose; or delete the file)")
        except CheckpointError as e:
            self.warn(str(e))
            d = None
        else:
            if d.get("format") == CHECKPOINT_FORMAT and d.get("key") == key:
                return d
            self.log(f"[{spec}] checkpoint {path} is of another format or configuration "
                     f"({d.get('format')!r}): training again")
        if self.dist.is_main:
            _discard(path)
        return None

    def _deploy_supplied(self, spec: str, defense) -> DeployedModel:
        self.check_defense(defense)
        sm = self.supplied
        model = copy.deepcopy(sm.module).to(self.device)
        model.requires_grad_(True)  # every parameter is stored in the memory, frozen or not
        model.eval()
        self._check_outputs(model)
        # a user's model is stored in the format; an entry's checkpoint was trained here with this defense
        qm = QuantizedModel.from_module(model, defense.storage_scheme() if sm.source == "user" else defense.scheme())
        flatten_parameters(qm.parameters_of(model))
        self.log(f"[{spec}] {sm.name}: supplied model ({qm.n_words} words in the memory), quantized as "
                 f"{qm.scheme.name}; not trained")
        dep = DeployedModel(defense, model, qm, stable_hash(self.model_identity(defense)), 0.0, False, [],
                            payload_digest(qm.state_dict()), weights_sha256=sm.weights_sha256)
        self._deployed[spec] = dep
        return dep

    def _check_outputs(self, model) -> None:
        """A supplied model must map the evaluation images to one logit per class (a clear error otherwise)."""
        ds = self.dataset
        x = ds.test_x[:2].to(self.device)
        try:
            with torch.inference_mode():
                out = model(x)
        except Exception as e:  # noqa: BLE001 - the user's model does not fit the data: name both
            raise UsageError(f"model {self.supplied.name} fails on the {self.suite.dataset} images of shape "
                             f"{list(ds.test_x.shape[1:])}: {type(e).__name__}: {str(e).strip()[:300]}") from None
        k = int(max(int(ds.test_y.max()), int(ds.attack_y.max()) if ds.attack_y.numel() else 0)) + 1
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != x.shape[0] or out.shape[1] < k:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UsageError(f"model {self.supplied.name} returns {shape} for {x.shape[0]} images; expected logits "
                             f"[N, classes] with at least {k} classes (the labels of {self.suite.dataset})")

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
        if spec not in self._attacks:
            self._attacks[spec] = self._create_attack(spec)
        return self._attacks[spec]

    def _create_attack(self, spec: str) -> tuple[str, object]:
        entry, params = ATTACKS.resolve(spec)
        _, kv = parse_spec(spec)
        # Only where the attack's own default is a number (an error map's 'patterns=None' keeps its meaning).
        over = {k: v for k, v in (("patterns", self.suite.patterns), ("base_seed", self.suite.base_seed))
                if isinstance(entry.params.get(k), int) and k not in kv}
        attack = create_attack(spec, **over)
        return attack.spec, attack

    def record_path(self, defense_spec: str, attack_spec: str) -> str:
        model = _slug(self.model_name)
        if self.supplied is not None:  # one folder per set of weights
            model += f"-{self.supplied.source}-{self.supplied.weights_sha256[:12]}"
        return os.path.join(self.opt.results_dir, self.suite.name, model, _slug(defense_spec),
                            _slug(attack_spec) + ".json")

    def cell_hash(self, dep: DeployedModel, attack) -> str:
        """Hash of everything behind a cell's numbers: the model key, the digest of the deployed quantized weights
        (a retrained model that differs never reuses old records), the attack with its input files by content,
        the evaluation split and data by content, the code version."""
        digests = self.input_digests("cell", attack)
        ident = {"model_key": dep.key, "weights": dep.weights_digest,
                 "attack": attack.registry_name, "attack_params": self._hashed_params(attack, digests, "attack"),
                 "inputs": digests, "eval_split": self.eval_split(),
                 "n_eval": int(self.dataset.test_y.shape[0]), "version": __version__}
        if isinstance(dep.qm, ProtectedModel):  # its stages and their parameters
            ident["protection"] = dep.qm.describe()
        return stable_hash(ident)

    def _read_record(self, path: str, chash: str) -> ResultRecord | None:
        """The record at ``path`` if it is intact and was computed with configuration hash ``chash``. A damaged or
        edited one is reported and not used (the caller recomputes and replaces it)."""
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                rec = ResultRecord.from_json(json.load(f))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecordError) as e:
            why = (f"{e.field}: {e.reason}" if isinstance(e, RecordError) else
                   f"not valid JSON ({e})" if isinstance(e, json.JSONDecodeError) else f"cannot read it ({e})")
            if isinstance(e, RecordError) and e.field == "format":
                self.log(f"result record {path} is of another format ({why}): recomputing it")
            else:
                self.warn(f"result record {path} is not used: {why}; it is recomputed now and replaced (rerun with "
                          "--rerun or delete the file to do so on purpose)")
            return None
        if rec.config_hash != chash:
            return None
        rec.cached, rec.path = True, path
        return rec

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
        if indices is not None:  # a part of the patterns: never read or written as the cell's record
            return self._compute_cell(dep, attack, aspec, chash, path, t_start, indices=indices, write=False)
        lock = self._artefact_lock(path, f"the result of {dep.defense.spec} x {aspec}") if write else nullcontext()
        with lock:
            if not self.opt.rerun:
                old = self.dist.broadcast_object(self._read_record(path, chash) if self.dist.is_main else None)
                if old is not None:
                    return old
            return self._compute_cell(dep, attack, aspec, chash, path, t_start, indices=None, write=write)

    def _compute_cell(self, dep: DeployedModel, attack, aspec: str, chash: str, path: str, t_start: float, *,
                      indices, write: bool) -> ResultRecord:
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
        if write:
            atomic_write_json(path, rec.to_json())
            rec.path = path
        return rec

    def make_record(self, dep: DeployedModel, attack, ev, chash: str, total_s: float) -> ResultRecord:
        ds = self.dataset
        d = dep.defense
        rate = getattr(attack, "rate", None)
        sm = self.supplied
        protected = isinstance(dep.qm, ProtectedModel)
        return ResultRecord(
            suite=self.suite.name, dataset=self.suite.dataset, eval_split=self.eval_split(),
            eval_split_rule=ds.info.get("eval_split"), n_eval=int(ds.test_y.shape[0]), model=self.model_name,
            model_options=dict(self.suite.model_options if sm is None else sm.options), n_params=int(dep.qm.n_words),
            model_source="trained" if sm is None else sm.source, checkpoint=None if sm is None else sm.checkpoint,
            checkpoint_sha256=None if sm is None else sm.checkpoint_sha256,
            weights_sha256=dep.weights_sha256,
            defense=d.spec, defense_name=d.registry_name, defense_params=dict(d.params),
            bits=int(dep.qm.bits), scheme=dep.qm.scheme.name,
            attack=attack.spec, attack_name=attack.registry_name, attack_params=dict(attack.params),
            attack_kind=getattr(attack, "kind", None), rate=None if rate is None else float(rate),
            flips=getattr(attack, "flips", None), clean_err=ev.clean_err, patterns=list(ev.patterns),
            train_seed=self.suite.train_seed if sm is None else None, version=__version__, git_rev=git_revision(),
            clean_nonfinite=ev.clean_nonfinite,
            config_hash=chash, inputs={**self.input_digests("model", d), **self.input_digests("cell", attack),
                                       "weights": dep.weights_digest}, device=device_name(self.device),
            timings={"train": dep.train_seconds, "trained_now": dep.trained_now, "attack_eval": ev.seconds,
                     "total": total_s}, recipe=self.recipe(d),
            date=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            trace=(ev.traces[0] if len(ev.traces) == 1 else ev.traces) if ev.traces else None, target=ev.target,
            memory_overhead=dep.qm.memory_overhead if protected else 0.0, decode_ms=ev.decode_ms,
            time_overhead=ev.time_overhead, protection=dep.qm.describe() if protected else None)

    def clean_error(self, defense_spec: str) -> float:
        dep = self.deploy(defense_spec)
        (x, y), _ = self._eval_tensors()
        dep.qm.load_into(dep.model)
        return (predict(dep.model, x) != y).float().mean().item()  # non-finite logits count as errors
