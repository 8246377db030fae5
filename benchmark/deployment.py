"""Deployment: train (or load) a defended model for one training seed, quantize it, and cache it.

Checkpoints are keyed by everything that determines the trained weights (the training data by content digest,
architecture and options, defense spec and its scheme, training recipe, augmentation, seed, what training
parallelism changes, code version): a changed configuration never loads a stale file. Training checkpoints are
written atomically every epoch, carry a content digest verified on every load, and resume; a damaged one is
reported and trained again, never used. A file lock per checkpoint makes concurrent identical runs train once.

A *supplied* model (:class:`~bitbench.user_model.SuppliedModel`: the user's module or checkpoint, or a leaderboard
entry's checkpoint) is never trained: each defense spec names the storage format it is quantized in. For a user's
model only formats qualify (a training recipe such as clip or randbet is refused: its weights did not come from it);
for an entry's checkpoint, trained here with the entry's defense, that defense's scheme applies.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import torch

from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import safe_name
from bitbench.configs.registries import DEFENSES, PROTECTIONS, create_defense
from bitbench.configs.spec import format_spec, join_stages, parse_spec, split_stages
from bitbench.configs.suite import stable_hash
from bitbench.defenses import TrainConfig
from bitbench.defenses.io import CheckpointError, load_checkpoint, payload_digest
from bitbench.defenses.quantized_model import flatten_parameters
from bitbench.defenses.training import CHECKPOINT_FORMAT

from . import __version__
from .context import RunContext, slug
from .data import Augment
from .models import build_model
from .distributed import ddp_wrap
from .user_model import SuppliedModel, check_outputs, supplied_model, tensor_digest

__all__ = ["DeployedModel", "Deployer", "is_storage_format"]


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
    qm: object                 # the deployed memory (a QuantizedModel or a protected memory)
    key: str
    train_seconds: float
    trained_now: bool
    history: list
    weights_digest: str = ""   # payload digest of the quantized model (codes + contexts)
    weights: dict | None = None       # the float weights before quantization (CPU state dict; trained models)
    weights_sha256: str | None = None  # tensor_digest of the float weights (trained or supplied)
    train_seed: int | None = None


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Deployer:
    """Deployed models of one run, one per (canonical defense spec, training seed) (module docstring)."""

    def __init__(self, ctx: RunContext, supplied: SuppliedModel | None = None):
        self.ctx = ctx
        self.supplied = supplied
        self._deployed: dict[tuple, DeployedModel] = {}
        self._trained_elsewhere: set = set()   # (spec, seed) trained by a worker process of this run

    # -- configuration ---------------------------------------------------------------------------------------------
    def canonical_defense(self, spec: str) -> str:
        """Canonical spec; the suite's ``bits`` applies unless the spec sets bits itself (or the defense's ``bits``
        is not a width: the float formats' ``bits`` names the fields that may flip). Protections after ``+`` keep
        their order (``rquant+secded:word=32``)."""
        entry, params = DEFENSES.resolve(spec)
        base, stages = split_stages(spec)
        _, kv = parse_spec(base)
        default = entry.params.get("bits")
        if isinstance(default, int) and not isinstance(default, bool) and "bits" not in kv:
            params["bits"] = self.ctx.suite.bits
        return join_stages(format_spec(entry.name, params, entry.params), [PROTECTIONS.canonical(s) for s in stages])

    @property
    def model_name(self) -> str:
        return self.supplied.name if self.supplied is not None else self.ctx.suite.model

    def seeds(self) -> list:
        """The training seeds of the run's models (a supplied model: one, None)."""
        return [None] if self.supplied is not None else list(self.ctx.suite.train_seeds)

    def train_config(self, seed: int) -> TrainConfig:
        d = dict(self.ctx.suite.train)
        d["seed"] = seed
        d["device"] = str(self.ctx.device)
        d["progress"] = self.ctx.opt.progress
        return TrainConfig.from_dict(d)

    def augment_options(self) -> dict:
        a = dict(self.ctx.suite.augment)
        if a.get("autoaugment") == "if-available":  # older suites; AutoAugment is plain torch now
            a["autoaugment"] = True
        return a

    def recipe(self, defense, seed: int | None = None) -> dict:
        """The training recipe of a cell's model (the defense's with its training configuration, plus augmentation
        and the processes it was trained on) for the result record; for a supplied model only its storage scheme
        (nothing of the recipe was applied)."""
        if self.supplied is not None and self.supplied.source == "user":
            return defense.supplied_recipe()
        d = defense.recipe(self.train_config(self.seeds()[0] if seed is None else seed))
        if self.supplied is None and self.ctx.dist.world > 1:
            d["world_size"] = self.ctx.dist.world  # trained by DistributedDataParallel over this many processes
        aug = {k: v for k, v in self.augment_options().items() if v not in (None, False, 0)}
        if aug:
            d["augment"] = aug
            if aug.get("fill", "mean") != "mean":
                d["deviations"] = d["deviations"] + [f"augmentation fills with {aug['fill']!r} (the paper: the "
                                                     "dataset mean)"]
        return d

    def model_identity(self, defense, seed: int | None) -> dict:
        ctx = self.ctx
        if self.supplied is not None:
            sm = self.supplied
            return {"model_source": sm.source, "model": sm.name, "model_options": sm.options,
                    "weights_sha256": sm.weights_sha256, "checkpoint_sha256": sm.checkpoint_sha256,
                    "data": {"dataset": ctx.suite.dataset, "sha256": ctx.data_digest("test", "attack")},
                    "defense": defense.identity(), "version": __version__}
        ds = ctx.dataset
        digests = ctx.input_digests("model", defense)
        ident = defense.identity()
        if "params" in ident:
            ident = dict(ident, params=ctx.hashed_params(defense, digests, "defense"))
        return {"dataset": ctx.suite.dataset, "inputs": digests, "n_train": int(ds.train_y.shape[0]),
                "model": ctx.suite.model, "model_options": ctx.suite.model_options, "defense": ident,
                "train": self.train_config(seed).identity(), "augment": self.augment_options(),
                "parallel": {"world_size": ctx.dist.world}, "version": __version__}

    def build_model(self, seed: int | None = None):
        ds = self.ctx.dataset
        s = self.ctx.suite
        return build_model(s.model, **ds.model_args(), seed=s.train_seeds[0] if seed is None else seed,
                           **dict(s.model_options))

    def checkpoint_path(self, defense, key: str) -> str:
        """``<cache>/checkpoints/<dataset>/<model>/<name>-<key>.pt``: ``name`` is the defense's ``checkpoint_name``
        (formats that store one trained model share it: ``float``), else its spec."""
        name = getattr(defense, "checkpoint_name", None) or defense.spec
        return os.path.join(self.ctx.opt.cache_dir, "checkpoints", safe_name(self.ctx.suite.dataset),
                            safe_name(self.ctx.suite.model), f"{slug(name)}-{key}.pt")

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
        s = self.ctx.suite
        self.supplied = supplied_model(self.build_model(), name=s.model, options=s.model_options, checkpoint=path,
                                       source=source)
        self._deployed.clear()
        return self.supplied

    # -- deployment ------------------------------------------------------------------------------------------------
    def checkpoint_ready(self, defense_spec: str, seed: int) -> bool:
        """Whether the checkpoint of the defense's model of ``seed`` is on disk (verified when it is loaded)."""
        defense = create_defense(self.canonical_defense(defense_spec))
        defense = getattr(defense, "base", defense)    # a protected defense trains as its base
        key = stable_hash(self.model_identity(defense, seed))
        return not self.ctx.opt.retrain and os.path.exists(self.checkpoint_path(defense, key))

    def base_to_prepare(self, defense_spec: str) -> str | None:
        """The canonical spec of the trained model behind ``defense_spec`` when several of its seeds may still need
        training in this run (None: nothing to train side by side: a supplied model, one seed, or deployed)."""
        if self.supplied is not None or len(self.seeds()) < 2:
            return None
        spec = self.canonical_defense(defense_spec)
        defense = create_defense(spec)
        base = self.canonical_defense(getattr(defense, "base", defense).spec)
        if any((base, s) in self._deployed for s in self.seeds()):
            return None
        return base

    def trained_elsewhere(self, base: str, seeds) -> None:
        """Note that the checkpoints of ``base`` for ``seeds`` were written by worker processes of this run."""
        self._trained_elsewhere |= {(base, s) for s in seeds}

    def deploy(self, defense_spec: str, seed: int | None = None) -> DeployedModel:
        """Train (or load the cached, verified checkpoint of) the defended model of training seed ``seed``
        (default: the run's first) and quantize it; a supplied model is only quantized."""
        spec = self.canonical_defense(defense_spec)
        seed = self.seeds()[0] if seed is None else seed
        if (spec, seed) in self._deployed:
            return self._deployed[(spec, seed)]
        defense = create_defense(spec)
        if hasattr(defense, "protect_memory"):  # trained (or supplied) as its base; only the memory is protected
            base = self.deploy(defense.base.spec, seed)
            qm = defense.protect_memory(base.qm)
            self.ctx.log(f"[{spec}] {qm.spec}: {qm.check_bits} check bits for {qm.data_bits} data bits "
                         f"(+{100 * qm.memory_overhead:.2f}% memory)")
            dep = DeployedModel(defense, base.model, qm, base.key, base.train_seconds, base.trained_now,
                                base.history, base.weights_digest, base.weights, base.weights_sha256, seed)
        elif self.supplied is not None:
            dep = self._deploy_supplied(spec, defense)
        else:
            dep = self._deploy_trained(spec, defense, seed)
        self._deployed[(spec, seed)] = dep
        return dep

    def _deploy_trained(self, spec: str, defense, seed: int) -> DeployedModel:
        ctx = self.ctx
        ds = ctx.dataset
        key = stable_hash(self.model_identity(defense, seed))
        path = self.checkpoint_path(defense, key)
        cfg = self.train_config(seed)
        model = self.build_model(seed)
        t0 = time.perf_counter()
        trained_now = False
        label = spec if len(self.seeds()) == 1 else f"{spec} seed {seed}"
        with ctx.artefact_lock(path, f"the checkpoint of {label}"):
            elsewhere = (spec, seed) in self._trained_elsewhere
            if ctx.opt.retrain and not elsewhere:
                if ctx.dist.is_main:
                    _discard(path)
                ctx.dist.barrier()
            ckpt = self._read_checkpoint(path, key, label)
            if ckpt is not None and int(ckpt.get("epoch", -1)) >= cfg.epochs:
                model.load_state_dict(ckpt["model"])
                model.to(ctx.device)
                history = list(ckpt.get("history", []))
                trained_now = elsewhere
                ctx.log(f"[{label}] loaded checkpoint {path}")
            else:
                resumed = f" (resuming at epoch {int(ckpt['epoch']) + 1})" if ckpt is not None else ""
                ctx.log(f"[{label}] training {ctx.suite.model} on {ctx.suite.dataset} for {cfg.epochs} epochs"
                        f"{resumed} on {ctx.device}")
                aug_opts = self.augment_options()
                augment = Augment.from_config(aug_opts, mean=ds.mean) if any(
                    v for k, v in aug_opts.items() if k != "fill") else None
                history = defense.train(model, ds.train_x, ds.train_y, cfg, augment=augment,
                                        num_classes=ds.num_classes, checkpoint=path, key=key,
                                        wrap=ddp_wrap(ctx.dist, ctx.device))
                trained_now = True
        train_s = time.perf_counter() - t0
        if trained_now:
            train_s = sum(h.get("seconds", 0.0) for h in history) or train_s
        model.eval()
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        qm = defense.quantize(model, trained_here=True)
        # The per-chip loop dequantizes each pattern straight into one flat parameter buffer (one pass).
        flatten_parameters(qm.parameters_of(model))
        return DeployedModel(defense, model, qm, key, train_s, trained_now, history, payload_digest(qm.state_dict()),
                             weights, tensor_digest(weights), seed)

    def _read_checkpoint(self, path: str, key: str, label: str) -> dict | None:
        """The verified checkpoint of ``key`` at ``path`` (None if absent). Anything else there -- damaged,
        unreadable, of another format or configuration -- is reported, removed and never used."""
        if not os.path.exists(path):
            return None
        try:
            d = load_checkpoint(path, hint="it is not used: the model is trained again and the file replaced "
                                           "(--retrain does this on purpose; or delete the file)")
        except CheckpointError as e:
            self.ctx.warn(str(e))
            d = None
        else:
            if d.get("format") == CHECKPOINT_FORMAT and d.get("key") == key:
                return d
            self.ctx.log(f"[{label}] checkpoint {path} is of another format or configuration "
                         f"({d.get('format')!r}): training again")
        if self.ctx.dist.is_main:
            _discard(path)
        return None

    def _deploy_supplied(self, spec: str, defense) -> DeployedModel:
        self.check_defense(defense)
        sm = self.supplied
        model = copy.deepcopy(sm.module).to(self.ctx.device)
        model.requires_grad_(True)  # every parameter is stored in the memory, frozen or not
        model.eval()
        check_outputs(model, self.ctx.dataset, sm.name, self.ctx.suite.dataset, self.ctx.device)
        # a user's model is stored in the format; an entry's checkpoint was trained here with this defense
        qm = defense.quantize(model, trained_here=sm.source != "user")
        flatten_parameters(qm.parameters_of(model))
        self.ctx.log(f"[{spec}] {sm.name}: supplied model ({qm.n_words} words in the memory), quantized as "
                     f"{qm.scheme.name}; not trained")
        return DeployedModel(defense, model, qm, stable_hash(self.model_identity(defense, None)), 0.0, False, [],
                             payload_digest(qm.state_dict()), weights_sha256=sm.weights_sha256)
