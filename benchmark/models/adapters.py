"""Models as the ecosystem has them: outputs that are not a tensor, inputs by keyword, and model sources such as
Hugging Face ``transformers`` built from a local config file.

**Outputs.** A model may return a tensor of logits, a ``ModelOutput`` / dict / dataclass with ``logits``, or a
tuple (its first element). :func:`logits_of` picks the logits; anything else is a :class:`UsageError` naming what
was returned.

**Inputs.** The benchmark calls ``model(x)`` with the batch's inputs (images, or token ids for a language model).
A forward that takes them by keyword gets them so: a Hugging Face model by its ``main_input_name`` (``pixel_values``,
``input_ids``), any other model by the name of a keyword-only first parameter. A forward that accepts
``use_cache`` gets ``use_cache=False`` (no key/value cache is built for the evaluation's full windows).

**The adapter** (:func:`adapt_model`) changes only the forward of the given module, in place: its class becomes a
subclass of its own class whose ``forward`` calls the original as above and returns the logits tensor. Parameter
and buffer names, the state dict and ``isinstance`` stay exactly the model's own, so checkpoints written with
``torch.save(model.state_dict())`` load unchanged and the names in result records and in the quantized memory are
the model's (``vit.encoder.layer.0.attention...``), with no wrapper prefix. Every model the benchmark did not
define goes through it: the user's builders, supplied modules, and the model sources below.

**Model sources** (:func:`register_model_source`): a model spec ``<source>:<rest>`` builds a model from another
library. Built in: ``transformers:<Class>[:<config.json>][:key=value,...]`` -- the ``transformers`` class (e.g.
``ViTForImageClassification``, ``GPT2LMHeadModel``) built with randomly initialized weights from a local JSON config
file (``config.to_json_file`` / ``config.json`` of a saved model; without one, the class's default config), the
options overriding config fields (``transformers:GPT2LMHeadModel:gpt2.json:n_layer=2``). Nothing is downloaded:
``from_pretrained`` is never called; the weights come from ``--checkpoint`` (a state dict) or from training here.
The config file enters the configuration by content (its SHA-256 is a model option).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
from collections.abc import Mapping
from typing import Callable

import torch
from torch import nn

from bitbench.configs.errors import UsageError

__all__ = ["logits_of", "adapt_model", "is_adapted", "input_keyword", "register_model_source", "MODEL_SOURCES",
           "model_source_of"]


def logits_of(out, where: str = "the model"):
    """The logits tensor of a model's output: a tensor itself, ``out['logits']`` / ``out.logits`` (a
    ``ModelOutput``, dict or dataclass), or the first element of a tuple or list."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    what = type(out).__name__
    if isinstance(out, Mapping):
        what += f" with keys {list(out)[:8]}"
    elif dataclasses.is_dataclass(out):
        what += f" with fields {[f.name for f in dataclasses.fields(out)][:8]}"
    raise UsageError(f"{where} returns a {what}; expected logits: a tensor, an output with a 'logits' field (a "
                     "ModelOutput, dict or dataclass) or a tuple whose first element is the logits")


def input_keyword(module: nn.Module) -> str | None:
    """The keyword the module's forward takes its input by (None: the first positional argument)."""
    name = getattr(module, "main_input_name", None)
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return name if isinstance(name, str) else None
    if isinstance(name, str) and any(p.name == name for p in params):
        return name
    if params and params[0].kind is inspect.Parameter.KEYWORD_ONLY:
        return params[0].name
    return None


def _takes(module: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


class _LogitsForward:
    """Mixed in before the model's own class by :func:`adapt_model`."""

    _bitbench_adapted = True
    _bitbench_input: str | None = None
    _bitbench_extra: dict = {}

    def forward(self, x, *args, **kwargs):
        kw = {**self._bitbench_extra, **kwargs}
        out = super().forward(**{self._bitbench_input: x}, **kw) if self._bitbench_input else \
            super().forward(x, *args, **kw)
        return logits_of(out, f"model {self._bitbench_name}")


@functools.lru_cache(maxsize=None)
def _adapted_class(cls: type, keyword: str | None, extra: tuple) -> type:
    return type(cls.__name__, (_LogitsForward, cls), {
        "__module__": cls.__module__, "__qualname__": cls.__qualname__, "_bitbench_input": keyword,
        "_bitbench_extra": dict(extra), "_bitbench_name": f"{cls.__module__}.{cls.__qualname__}",
        "__doc__": f"{cls.__qualname__} whose forward returns its logits tensor (bitbench.models.adapters)."})


def is_adapted(module: nn.Module) -> bool:
    return bool(getattr(type(module), "_bitbench_adapted", False))


def adapt_model(module: nn.Module) -> nn.Module:
    """Make ``module``'s forward take the input as its signature wants and return the logits tensor (in place;
    names, state dict and class membership unchanged; see the module docstring). Returns ``module``."""
    if not isinstance(module, nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got a {type(module).__name__}")
    if is_adapted(module):
        return module
    extra = (("use_cache", False),) if _takes(module, "use_cache") else ()
    try:
        module.__class__ = _adapted_class(type(module), input_keyword(module), extra)
    except TypeError as e:  # e.g. a scripted module: its class cannot be extended
        raise UsageError(f"model {type(module).__qualname__} cannot be adapted ({e}); give a module whose forward "
                         "returns the logits tensor") from None
    return module


# -- model sources -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelSource:
    """A registered model source: ``build(rest, options) -> (builder, options)`` for a spec ``name:rest``."""

    name: str
    resolve: Callable
    summary: str


MODEL_SOURCES: dict[str, ModelSource] = {}


def register_model_source(name: str, summary: str = ""):
    """Register ``resolve(rest: str) -> (name, builder, options, accepts)`` for model specs ``name:rest``."""
    def deco(fn):
        MODEL_SOURCES[name] = ModelSource(name, fn, summary or (inspect.getdoc(fn) or "").split("\n")[0])
        return fn
    return deco


def model_source_of(spec: str) -> ModelSource | None:
    """The source a model spec names (``transformers:...``), or None."""
    head = spec.split(":", 1)[0].strip() if isinstance(spec, str) and ":" in spec else None
    return MODEL_SOURCES.get(head) if head else None


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("model specs 'transformers:...' need the transformers package, which is not installed: "
                         "pip install 'bitbench[transformers]' (or pip install transformers)") from None
    return transformers


def build_transformers(class_name: str, config: str | None = None, config_sha256: str | None = None,
                       **overrides) -> nn.Module:
    """The ``transformers`` model ``class_name`` with random weights from the JSON config file ``config`` (the
    class's default config without one), fields overridden by ``overrides``; adapted (:func:`adapt_model`)."""
    tf = _import_transformers()
    cls = getattr(tf, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "config_class")):
        raise UsageError(f"model 'transformers:{class_name}': transformers {tf.__version__} has no model class "
                         f"{class_name!r} (e.g. ViTForImageClassification, GPT2LMHeadModel)")
    if config is None:
        cfg = cls.config_class()
    else:
        if not os.path.isfile(config):
            raise UsageError(f"model 'transformers:{class_name}': config file {config} not found (a JSON file as "
                             "written by config.to_json_file or saved with a model as config.json)")
        if config_sha256 is not None and _file_sha256(config) != config_sha256:
            raise UsageError(f"model 'transformers:{class_name}': config file {config} changed since the run "
                             "started (its SHA-256 differs)")
        try:
            cfg = cls.config_class.from_json_file(config)
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise UsageError(f"model 'transformers:{class_name}': cannot read config {config} ({e})") from None
    known = cfg.to_dict()
    for k, v in overrides.items():
        if k not in known:
            raise UsageError(f"model 'transformers:{class_name}': its config has no field {k!r} "
                             f"(fields: {', '.join(sorted(known)[:30])} ...)")
        setattr(cfg, k, v)
    try:
        model = cls(cfg)
    except Exception as e:  # noqa: BLE001 - a config the class refuses: the user's input
        raise UsageError(f"model 'transformers:{class_name}' cannot be built from {config or 'its default config'}: "
                         f"{type(e).__name__}: {str(e).strip()[:300]}") from None
    return adapt_model(model.float())


@register_model_source("transformers", "a transformers model class built from a local JSON config "
                                       "(transformers:Class[:config.json][:field=value,...]); random weights")
def _resolve_transformers(rest: str):
    from bitbench.configs.spec import parse_spec, parse_value

    parts = rest.split(":", 2)
    class_name = parts[0].strip()
    if not class_name.isidentifier():
        raise UsageError(f"model 'transformers:{rest}': expected transformers:Class[:config.json][:field=value,...]")
    config, opts = None, ""
    if len(parts) >= 2:
        if "=" in parts[1] and len(parts) == 2:
            opts = parts[1]
        else:
            config = parts[1].strip() or None
            opts = parts[2] if len(parts) == 3 else ""
    options: dict = {}
    if config is not None:
        path = os.path.abspath(os.path.expanduser(config))
        if not os.path.isfile(path):
            raise UsageError(f"model 'transformers:{rest}': config file {path} not found")
        options.update(config=path, config_sha256=_file_sha256(path))
    if opts.strip():
        _, kv = parse_spec("x:" + opts)
        options.update({k: parse_value(v, None) for k, v in kv.items()})
    builder = functools.partial(build_transformers, class_name)
    return f"transformers:{class_name}", builder, options, frozenset(options)
