"""Building a model by registered name or by a reference to the user's own code.

A *model spec* is either

* a registered name with options, ``vit`` or ``vit:depth=4,dim=96`` (see ``python -m benchmark list models``), or
* a reference to a builder in the user's code, ``package.module:function`` (imported like ``import
  package.module``, from the current folder too) or ``path/to/file.py:function``, optionally followed by
  options: ``mymodels:build:width=32``.
* a model source (:mod:`.adapters`): ``transformers:ViTForImageClassification:config.json`` (a Hugging Face
  model class built from a local config file, random weights).

A model that is not registered here is adapted (:func:`.adapters.adapt_model`): its forward may return a
``ModelOutput``, dict, dataclass or tuple, and take its input by keyword; the benchmark sees the logits tensor.

A builder is a class or function returning an ``nn.Module``. It gets ``num_classes``, ``in_channels`` and
``image_size`` (from the dataset) and ``mean``/``std`` (a fixed whitening layer) only where its signature accepts
them, plus the spec's options; a registered builder must give every parameter a default (timm style).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from bitbench.configs.errors import UsageError
from bitbench.configs.registries import MODELS
from bitbench.configs.spec import SpecError, format_value, parse_spec, parse_value

from .adapters import adapt_model, model_source_of

__all__ = ["build_model", "resolve_model", "is_reference", "ModelBuilder", "describe_models", "DATA_ARGS"]

DATA_ARGS = ("num_classes", "in_channels", "image_size", "mean", "std")  # what the harness supplies
_ATTR = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"


@dataclass
class ModelBuilder:
    """A resolved model spec: ``name`` (registered name, or the reference ``module:function``), the builder,
    its options (parsed, defaults not filled in) and the parameters it accepts (``None``: any, ``**kwargs``)."""

    name: str
    builder: Callable[..., nn.Module]
    options: dict
    accepts: frozenset | None
    registered: bool

    def takes(self, arg: str) -> bool:
        return self.accepts is None or arg in self.accepts


def is_reference(spec: str) -> bool:
    """``module:function`` / ``file.py:function`` (optionally ``:options``), as opposed to a registered spec."""
    if not isinstance(spec, str) or ":" not in spec:
        return False
    head, rest = spec.split(":", 1)
    attr = rest.split(":", 1)[0]
    return bool(re.fullmatch(_ATTR, attr.strip())) and (head.endswith(".py") or "/" in head or os.sep in head
                                                        or bool(re.fullmatch(_ATTR, head.strip())))


def _import_module(head: str, spec: str):
    if head.endswith(".py") or "/" in head or os.sep in head:
        path = os.path.abspath(os.path.expanduser(head))
        if not os.path.isfile(path):
            raise UsageError(f"model {spec!r}: file not found: {path}")
        name = "bitbench_user_model_" + hashlib.sha256(path.encode()).hexdigest()[:12]
        if name in sys.modules:
            return sys.modules[name]
        mspec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[name] = module
        try:
            mspec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:  # `python -m benchmark` has the current folder on sys.path; the console script does not
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(head)
    except ModuleNotFoundError as e:
        if e.name and (head == e.name or head.startswith(e.name + ".")):
            raise UsageError(f"model {spec!r}: no module named {e.name!r} (looked on sys.path and in {cwd}; "
                             "install the package, run from its folder, or give path/to/file.py:function)") \
                from None
        raise  # the user's module imports something that is missing: its own traceback says what
    finally:
        if added:
            sys.path.remove(cwd)


def _signature(obj, spec: str) -> tuple[dict, frozenset | None]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return {}, None
    params, any_kw = {}, False
    for p in sig.parameters.values():
        if p.name == "self" or p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.VAR_KEYWORD:
            any_kw = True
            continue
        params[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return params, None if any_kw else frozenset(params)


def resolve_model(spec: str, **options) -> ModelBuilder:
    """A model spec (see the module docstring) -> :class:`ModelBuilder`. ``options`` (typed values) are added to
    those of the spec. Unknown names, missing modules or attributes and unknown options are a :class:`UsageError`."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"a model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    source = model_source_of(spec)
    if source is not None:  # transformers:Class:config.json (benchmark.models.adapters)
        name, builder, parsed, accepts = source.resolve(spec.split(":", 1)[1])
        return ModelBuilder(name, builder, {**parsed, **options}, accepts | frozenset(options), registered=False)
    if is_reference(spec):
        head, rest = spec.split(":", 1)
        attr, _, opts = rest.partition(":")
        module = _import_module(head.strip(), spec)
        obj = module
        for part in attr.strip().split("."):
            if not hasattr(obj, part):
                raise UsageError(f"model {spec!r}: module {head!r} has no attribute {attr.strip()!r}")
            obj = getattr(obj, part)
        if not callable(obj):
            raise UsageError(f"model {spec!r}: {attr.strip()!r} is a {type(obj).__name__}, not a class or function")
        defaults, accepts = _signature(obj, spec)
        _, kv = parse_spec("x:" + opts) if opts.strip() else ("x", {})
        parsed = {}
        for k, v in kv.items():
            if accepts is not None and k not in accepts:
                raise SpecError(f"model {spec!r}: {attr.strip()} has no parameter {k!r}; parameters: "
                                f"{', '.join(defaults) or '(none)'}")
            parsed[k] = parse_value(v, defaults.get(k))
        name = f"{head.strip()}:{attr.strip()}"
        return ModelBuilder(name, obj, {**parsed, **options}, accepts, registered=False)
    entry, params = MODELS.resolve(spec)
    _, kv = parse_spec(spec)
    chosen = {k: params[k] for k in kv if k in params}
    for k in options:
        if k not in entry.params:
            raise SpecError(f"model {entry.name!r} has no parameter {k!r}. Valid parameters: "
                            + ", ".join(f"{p}={format_value(d)}" for p, d in entry.params.items()
                                        if p not in DATA_ARGS))
    _, accepts = _signature(entry.obj, spec)
    return ModelBuilder(entry.name, entry.obj, {**chosen, **options}, accepts, registered=True)


def build_model(name: str, *, num_classes: int, in_channels: int | None = None, image_size: int | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, seed: int | None = None,
                **options) -> nn.Module:
    """Build a model from a spec (registered name or ``module:function`` reference, see the module docstring).

    ``num_classes`` (for a language model: the vocabulary), ``in_channels``, ``image_size`` (images only; None for
    token inputs), ``mean``/``std`` (one value per input channel; a fixed `Normalize` first) go to builders that
    accept them; ``options`` (e.g. ``norm='rgn'``, ``width=32``,
    ``depth=3``) to the builder. ``seed``: initialize inside ``torch.random.fork_rng`` seeded with it (the global
    RNG state is unchanged afterwards); ``None`` uses the global RNG as any torch module does. The returned module
    carries ``build_spec`` (the arguments) so that ``build_model(**model.build_spec)`` rebuilds it."""
    mb = resolve_model(name, **options)
    if (mean is None) != (std is None):
        raise UsageError("give both mean and std (or neither)")
    if mean is not None and in_channels is not None and len(tuple(mean)) != in_channels:
        raise UsageError(f"mean has {len(tuple(mean))} values for {in_channels} input channels")
    width = mb.options.get("width")
    if width is not None and (isinstance(width, bool) or int(width) != width or width < 1):
        raise UsageError(f"width must be a positive integer, got {width!r}")
    if num_classes < 2:
        raise UsageError(f"num_classes must be >= 2, got {num_classes}")
    data = dict(num_classes=int(num_classes), in_channels=None if in_channels is None else int(in_channels),
                image_size=None if image_size is None else int(image_size),
                mean=None if mean is None else tuple(float(v) for v in mean),
                std=None if std is None else tuple(float(v) for v in std))
    data = {k: v for k, v in data.items() if v is not None or k in ("mean", "std")}  # token inputs: no image args
    args = {k: v for k, v in data.items() if mb.takes(k) and (v is not None or k not in ("mean", "std"))}
    args.update({k: v for k, v in mb.options.items() if k not in DATA_ARGS})
    if "norm" in args and args["norm"] is not None:
        args["norm"] = str(args["norm"]).lower()
    if seed is None:
        model = mb.builder(**args)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed))
            model = mb.builder(**args)
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {name!r}: the builder returned a {type(model).__name__}, expected a "
                         "torch.nn.Module")
    if not mb.registered:  # the user's code or another library: outputs and inputs as the ecosystem has them
        adapt_model(model)
    model.build_spec = {"name": mb.name, **data, **{k: v for k, v in args.items() if k not in data}, "seed": seed}
    return model


def describe_models(pattern: str = "*") -> list[dict]:
    """One dict per registered model (name, summary, options with defaults and docs, aliases, source); the
    data-derived arguments (num_classes, in_channels, image_size, mean, std) are left out of ``params``."""
    out = []
    for d in MODELS.describe():
        if d["name"] in MODELS.list(pattern):
            d["params"] = {k: v for k, v in d["params"].items() if k not in DATA_ARGS}
            out.append(d)
    return out
