"""Activation bit errors: layer outputs quantized into a virtual activation memory whose words take bit errors.

Accelerators keep activations in the same low-voltage SRAM as the weights. Here the outputs of chosen layers are
stored in an activation format and their words take bit errors by the one flip rule of :mod:`bitbench.kernels`
(Philox4x32-10, counter = the word's global index, key = the pattern's seed), as the weight words do.

Which layers (``layers=``, fnmatch patterns on module names as in ``model.named_modules()``, separated by ``|``):
by default the output of every module that is a convolution (``torch.nn.Conv1d/2d/3d`` and the transposed ones:
subclasses of ``torch.nn.modules.conv._ConvNd``), a linear layer (``torch.nn.Linear`` and its subclasses) or an
attention layer (``torch.nn.MultiheadAttention``: its first output, the attention output; MHA computes its output
projection inside its own forward, so its ``out_proj`` never runs a forward of its own and holds no words). A
pattern selects the matching modules of any type (e.g. ``features.2`` for a ReLU's output). Only modules whose
forward runs have words. ``faulty=`` restricts which of those quantized outputs take errors (default: all), so that
a per-layer pattern keeps the baseline of the whole deployment.

Formats (``format=``): ``int{m}`` (``int8`` by default; m = 2..16): m-bit unsigned offset codes of one range per
layer output (per tensor), the weights' RQuant numerics (:func:`bitbench.defenses.rquant`: the asymmetric
``[min, max]`` range mapped onto the codes, round to nearest, clamped decode), the range ``[min, max]`` calibrated
once per model on the first ``calib`` images of the attacker split (embedded MNIST-5k: its 500 training images;
local datasets: the last 1,000 test images, disjoint from the evaluation images), run through the clean quantized
model in chunks of 256 images with float activations; outputs outside the range saturate to it. Or a float format
of the weight memory (``float16``, ``bfloat16``, ``float32``, ``fp8e4m3``, ``fp8e5m2``;
:mod:`bitbench.defenses.float_formats`): torch's cast (round to nearest even; float16 overflows to inf), no
calibration. An input whose activation is NaN (a weight error of a float format) keeps NaN through an integer
format: it is not quantized.

The virtual activation memory. Module ``p`` (its position in ``model.named_modules()``, the root module being 0),
call ``c`` of that module within one forward pass (0 for a module called once; at most 16 calls), makes one *slot*
``l = 16 p + c``. Its output for one input has ``E`` elements (the output tensor without the batch dimension,
flattened in C order; the batch dimension is dim 0, dim 1 for an ``nn.MultiheadAttention`` with
``batch_first=False``). Element ``e`` of slot ``l`` for the input of global index ``n`` (its position in the
evaluation split) is the word with global index

    ACT_OFFSET + l * SLOT_WORDS + n * E + e,      ACT_OFFSET = 2^62, SLOT_WORDS = 2^40

(so ``n * E`` must stay below 2^40). The offsets do not depend on the batch size, on the batch an input runs in, on
which layers are selected, on other layers' sizes or on the weight memory (which, with its check, metadata and
buffer regions, lies far below 2^62): the same seed gives independent weight and activation errors, a chip is the
same at batch size 1 and 128 and on every backend, and the errors at a lower rate are a subset of those at a higher
one. An integer word has m attackable bits (bits m..7 of its uint8/int16 container never flip); a float word all of
its bits.
"""

from __future__ import annotations

import fnmatch
import re

import torch
from torch import nn

from bitbench import kernels
from bitbench.configs.spec import SpecError
from bitbench.defenses.float_formats import FLOAT_KINDS, FloatFormat
from bitbench.defenses.layout import Segments
from bitbench.defenses.quantization import QuantContext, rquant

from .base import guard_module
from .runtime import Runtime

__all__ = ["ACT_OFFSET", "SLOT_WORDS", "MAX_CALLS", "CALIB_CHUNK", "ActivationFormat", "ActivationMemory",
           "ActivationFaults", "ActivationRuntime", "default_layer", "slot_offset"]

ACT_OFFSET = 1 << 62   # global index of the activation memory's first word
SLOT_WORDS = 1 << 40   # words per slot (inputs x elements per input)
MAX_CALLS = 16         # calls of one module per forward pass
CALIB_CHUNK = 256      # images per calibration forward pass (fixed: ranges do not depend on the device's batch)
_MAX_SLOT = ((1 << 63) - ACT_OFFSET) // SLOT_WORDS
_INT = re.compile(r"int([0-9]+)")


def slot_offset(slot: int) -> int:
    """Global index of slot ``slot``'s first word (input 0, element 0)."""
    if not 0 <= slot < _MAX_SLOT:
        raise ValueError(f"activation slot {slot} is outside 0..{_MAX_SLOT - 1}")
    return ACT_OFFSET + slot * SLOT_WORDS


def default_layer(module: nn.Module) -> bool:
    """A module whose output is in the activation memory by default: a convolution, a linear layer, an attention
    layer (module docstring)."""
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention))


class ActivationFormat:
    """How activations are stored: ``int{m}`` (calibrated per-tensor affine codes) or a float format."""

    def __init__(self, spec: str = "int8"):
        s = str(spec).strip().lower()
        m = _INT.fullmatch(s)
        if m:
            bits = int(m.group(1))
            if not 2 <= bits <= 16:
                raise SpecError(f"format int{bits}: integer activation formats have 2..16 bits (int8, int4, ...)")
            self.name, self.scheme, self.float = f"int{bits}", rquant(bits), None
        elif s in FLOAT_KINDS:
            self.name, self.scheme, self.float = s, None, FloatFormat(s)
        else:
            raise SpecError(f"activation format must be int{{m}} (m = 2..16, e.g. int8) or one of "
                            f"{', '.join(FLOAT_KINDS)}, got {spec!r}")

    @property
    def calibrated(self) -> bool:
        """Integer formats need a calibrated range per slot."""
        return self.scheme is not None

    @property
    def bits(self) -> int:
        """Attackable bits per word (m for integer codes, the width for floats)."""
        return self.scheme.bits if self.scheme is not None else self.float.width

    @property
    def width(self) -> int:
        return self.scheme.width if self.scheme is not None else self.float.width

    @property
    def protected(self) -> int:
        return self.scheme.protected if self.scheme is not None else 0

    def context(self, lo: torch.Tensor, hi: torch.Tensor) -> QuantContext:
        """The per-slot contexts of calibrated ranges ``[lo, hi]`` (float32 ``[S]``)."""
        return self.scheme.context_from_statistics((lo, hi), lo.numel(), lo.device)

    def encode(self, flat: torch.Tensor, ctx: QuantContext | None) -> torch.Tensor:
        """Words of the float32 activations ``flat`` (1-D; one slot's context)."""
        if self.scheme is None:
            return flat.to(self.float.float_dtype).view(self.float.dtype)
        codes, _, _ = self.scheme.quantize(flat, Segments.single(flat.numel()), context=ctx, check=False)
        return codes

    def decode(self, words: torch.Tensor, ctx: QuantContext | None) -> torch.Tensor:
        """float32 activations the words hold."""
        if self.scheme is None:
            return words.view(self.float.float_dtype).to(torch.float32)
        return self.scheme.decode(words, ctx, Segments.single(words.numel()))

    def describe(self) -> str:
        if self.scheme is None:
            return f"{self.name} (raw IEEE bits, torch's cast)"
        return (f"{self.name}: {self.scheme.bits}-bit unsigned offset codes, one calibrated [min, max] range per "
                "layer output (RQuant numerics)")


def _batch_first(module: nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``y`` with its batch dimension first (and whether it was moved)."""
    if isinstance(module, nn.MultiheadAttention) and not module.batch_first and y.dim() == 3:
        return y.transpose(0, 1), True
    return y, False


def _main(output):
    """The tensor of a module's output that is stored (MHA: the attention output)."""
    if isinstance(output, tuple):
        return output[0]
    return output


def _with_main(output, y):
    if isinstance(output, tuple):
        return (y,) + tuple(output[1:])
    return y


class _Hooks:
    """Forward hooks on the root module (batch size, call counts, global input index) and on the slot modules;
    subclasses implement :meth:`on_output` (the tensor, batch-first, of module position ``p``, call ``c``)."""

    def __init__(self, model: nn.Module, modules: dict):
        self.model = model
        self.modules = modules          # position -> (name, module)
        self.next_start = 0
        self.start = 0
        self.batch_size = None
        self.calls: dict = {}
        self._handles: list = []

    def __enter__(self):
        self.next_start = 0
        try:
            for p, (name, mod) in self.modules.items():
                self._handles.append(mod.register_forward_hook(self._make_hook(p, name)))
            self._handles.append(self.model.register_forward_pre_hook(self._pre))
            self._handles.append(self.model.register_forward_hook(self._post))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def batch(self, start: int) -> None:
        start = int(start)
        if start < 0:
            raise ValueError(f"the global index of a batch's first input must be >= 0, got {start}")
        self.next_start = start

    def _pre(self, module, args, kwargs=None):
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if x is None:
            raise ValueError("activation faults need the model's input tensor as a positional argument")
        self.batch_size = int(x.shape[0])
        self.start = self.next_start
        self.calls = {}

    def _post(self, module, args, output):
        self.next_start = self.start + (self.batch_size or 0)

    def _make_hook(self, p: int, name: str):
        def hook(mod, args, output):
            y0 = _main(output)
            if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
                return None
            c = self.calls.get(p, 0)
            self.calls[p] = c + 1
            if c >= MAX_CALLS:
                raise ValueError(f"module {name!r} ran more than {MAX_CALLS} times in one forward pass; the "
                                 f"activation memory has room for {MAX_CALLS} calls per module")
            y, moved = _batch_first(mod, y0)
            if y.dim() == 0 or y.shape[0] != self.batch_size:
                raise SpecError(f"activation faults: the output of module {name!r} has shape {list(y0.shape)}, "
                                f"whose first dimension is not the batch ({self.batch_size} inputs); leave it out "
                                "with layers= (fnmatch patterns of the modules to include)")
            new = self.on_output(p, c, name, mod, y)
            if new is None:
                return None
            if moved:
                new = new.transpose(0, 1)
            return _with_main(output, new)
        return hook

    def on_output(self, p, c, name, mod, y):
        raise NotImplementedError


class _Calibration(_Hooks):
    """Per slot: the min and max of the finite output values and the elements per input."""

    def __init__(self, model, modules):
        super().__init__(model, modules)
        self.lo: dict = {}
        self.hi: dict = {}
        self.numel: dict = {}

    def on_output(self, p, c, name, mod, y):
        s = MAX_CALLS * p + c
        v = y.detach().reshape(-1).float()
        fin = torch.isfinite(v)
        if not bool(fin.all()):
            v = v[fin]
        self.numel.setdefault(s, y[0].numel())
        if v.numel():
            lo, hi = torch.aminmax(v)
            self.lo[s] = torch.minimum(self.lo[s], lo) if s in self.lo else lo
            self.hi[s] = torch.maximum(self.hi[s], hi) if s in self.hi else hi
        return None


class ActivationMemory:
    """The activation memory of one deployed model: which modules are stored, their slots and calibrated ranges.

    Built by :meth:`build`; :meth:`runtime` gives the :class:`ActivationRuntime` of a pattern."""

    def __init__(self, model: nn.Module, fmt: ActivationFormat, modules: dict, faulty: set, ranges: dict,
                 numel: dict, calibration: str | None):
        self.model = model
        self.format = fmt
        self.modules = modules              # position -> (name, module): the stored outputs
        self.faulty = faulty                # positions whose words take errors
        self.ranges = ranges                # slot -> (lo, hi) floats (integer formats)
        self.numel = numel                  # slot -> elements per input (calibrated; filled in at run time too)
        self.calibration = calibration
        self._ctx = {}
        if fmt.calibrated and ranges:
            slots = sorted(ranges)
            lo = torch.tensor([ranges[s][0] for s in slots], dtype=torch.float32)
            hi = torch.tensor([ranges[s][1] for s in slots], dtype=torch.float32)
            ctx = fmt.context(lo, hi)
            self._ctx = {s: ctx[i:i + 1] for i, s in enumerate(slots)}
        self._ctx_dev: dict = {}

    @staticmethod
    def select(model: nn.Module, layers=None, faulty=None, *, param: str = "layers") -> tuple[dict, set]:
        """``({position: (name, module)}, faulty positions)`` for fnmatch patterns ``layers`` (None: the default
        layers) and ``faulty`` (None: all stored ones). A pattern that matches no module is a :class:`SpecError`
        naming the parameter ``param`` (``layers``, or ``act_layers`` in a combined spec)."""
        mods = list(model.named_modules())
        names = [n for n, _ in mods]

        def match(pats, pool, what, among):
            pool = list(pool)
            for q in pats:
                if not any(fnmatch.fnmatchcase(names[p], q) for p in pool):
                    raise SpecError(f"{what}: no {among} matches {q!r}; they are "
                                    f"{[names[p] for p in pool if names[p]][:40]}")
            return [p for p in pool if any(fnmatch.fnmatchcase(names[p], q) for q in pats)]

        if layers is None:
            chosen = [p for p, (_, m) in enumerate(mods) if default_layer(m)]
            if not chosen:
                raise SpecError(f"the model has no conv, linear or attention layer; name the modules whose outputs "
                                f"are stored with {param}=")
        else:
            chosen = match(layers, range(len(mods)), param, "module of the model")
        chosen_set = {p: mods[p] for p in chosen}
        if faulty is None:
            bad = set(chosen)
        else:
            bad = set(match(faulty, chosen, "faulty", "stored layer"))
        return chosen_set, bad

    @classmethod
    def build(cls, model: nn.Module, qm, fmt: ActivationFormat, *, layers=None, faulty=None, data=None,
              calib: int = 512, param: str = "layers") -> "ActivationMemory":
        """Select the stored modules and, for an integer format, calibrate their ranges: ``qm``'s clean memory is
        loaded into ``model`` and the first ``calib`` images of ``data = (x, y)`` (the attacker split) run through
        it in chunks of :data:`CALIB_CHUNK` in eval mode (module docstring); ``model`` is given back exactly as it
        was (parameters, buffers, modes)."""
        modules, bad = cls.select(model, layers, faulty, param=param)
        ranges, numel, desc = {}, {}, None
        if fmt.calibrated:
            if data is None:
                raise ValueError(f"activation format {fmt.name} calibrates its ranges on the attacker split: pass "
                                 "data=(x, y)")
            x = data[0][:calib]
            if x.shape[0] == 0:
                raise ValueError("the calibration split is empty")
            cal = _Calibration(model, modules)
            with guard_module(model, []):      # the module comes back exactly as it was (values, buffers, modes)
                qm.load_into(model)
                with torch.inference_mode(), cal:
                    for i in range(0, x.shape[0], CALIB_CHUNK):
                        cal.batch(i)
                        model(x[i:i + CALIB_CHUNK])
            for s, n in cal.numel.items():
                lo = float(cal.lo[s]) if s in cal.lo else 0.0
                hi = float(cal.hi[s]) if s in cal.hi else 0.0
                ranges[s] = (lo, hi)
                numel[s] = n
            if not ranges:
                raise SpecError("activation faults: none of the selected modules produced an output on the "
                                "calibration images")
            desc = f"attack[0:{x.shape[0]}]"
        return cls(model, fmt, modules, bad, ranges, numel, desc)

    def ctx(self, slot: int, device) -> QuantContext | None:
        if not self.format.calibrated:
            return None
        key = (slot, str(device))
        if key not in self._ctx_dev:
            if slot not in self._ctx:
                raise ValueError(f"activation slot {slot} (module position {slot // MAX_CALLS}, call "
                                 f"{slot % MAX_CALLS}) produced no output during calibration")
            self._ctx_dev[key] = self._ctx[slot].to(device)
        return self._ctx_dev[key]

    def runtime(self, seed: int | None, p01: float = 0.0, p10: float | None = None, *, protected: int | None = None,
                backend: str | None = None, observer=None) -> "ActivationRuntime":
        """The runtime of one pattern (seed, rates; ``p01 = 0``: quantization only, the clean baseline).
        ``protected``: bits of every word that never flip (default: the format's container bits)."""
        return ActivationRuntime(self, seed, p01, p10, protected=protected, backend=backend, observer=observer)

    def describe(self) -> dict:
        """The stored layers, slots and ranges (floats; a record may keep them)."""
        names = {p: n for p, (n, _) in self.modules.items()}
        ran = {s // MAX_CALLS for s in self.numel}        # modules whose forward ran (calibration or run time)
        keep = sorted(p for p in self.modules if p in ran or not self.numel)
        return {"format": self.format.name, "layers": [names[p] for p in keep],
                "faulty": [names[p] for p in keep if p in self.faulty], "calibration": self.calibration,
                "ranges": {f"{names[s // MAX_CALLS]}#{s % MAX_CALLS}": list(r) for s, r in sorted(self.ranges.items())}}


class ActivationRuntime(_Hooks, Runtime):
    """One pattern's activation faults: entered around the forward passes (see :mod:`.runtime`); each stored output
    is encoded, its words flipped by the pattern's rule at their global indices, and decoded.

    ``observer(slot, start, clean_words, words)``, if given, sees every stored batch (tests, profiles).
    ``flips`` counts the activation bits flipped so far."""

    def __init__(self, memory: ActivationMemory, seed, p01, p10, *, protected=None, backend=None, observer=None):
        _Hooks.__init__(self, memory.model, memory.modules)
        self.memory = memory
        self.seed = seed
        self.p01 = float(p01)
        self.p10 = None if p10 is None else float(p10)
        self.protected = memory.format.protected if protected is None else int(protected)
        self.backend = backend
        self.observer = observer
        self.flips = 0
        self.active = (self.p01 > 0 or (self.p10 or 0) > 0) and seed is not None

    def on_output(self, p, c, name, mod, y):
        mem, fmt = self.memory, self.memory.format
        s = MAX_CALLS * p + c
        n_in = y.shape[0]
        e = y[0].numel()
        known = mem.numel.setdefault(s, e)
        if known != e:
            raise ValueError(f"module {name!r} (call {c}) gave {e} elements per input, {known} before: the "
                             "activation memory's layout needs a fixed output size")
        if (self.start + n_in) * e > SLOT_WORDS:
            raise ValueError(f"module {name!r}: {self.start + n_in} inputs x {e} elements exceed the "
                             f"{SLOT_WORDS} words of an activation slot")
        flat = y.detach().reshape(-1).to(torch.float32).contiguous()
        nan = torch.isnan(flat) if fmt.calibrated else None
        if nan is not None and bool(nan.any()):
            flat = torch.where(nan, torch.zeros((), dtype=flat.dtype, device=flat.device), flat)
        else:
            nan = None
        ctx = mem.ctx(s, flat.device)
        clean = fmt.encode(flat, ctx)
        words = clean
        if self.active and p in mem.faulty:
            words = kernels.random_flip(clean, self.p01, self.p10, seed=self.seed, bits=fmt.bits,
                                        protected=self.protected, offset=slot_offset(s) + self.start * e,
                                        backend=self.backend)
            self.flips += kernels.hamming_total(clean, words, bits=fmt.bits)
        if self.observer is not None:
            self.observer(s, self.start, clean, words)
        out = fmt.decode(words, ctx)
        if nan is not None:
            out = torch.where(nan, torch.full((), float("nan"), device=out.device), out)
        return out.view(y.shape).to(y.dtype)

    def describe(self) -> dict:
        return {"activations": self.memory.describe()}


class ActivationFaults:
    """The activation part of an attack's parameters (``layers``, ``faulty``, ``format``, ``calib``, MSB-only,
    ``bit`` positions): builds the :class:`ActivationMemory` of a model and the runtimes of its patterns."""

    def __init__(self, fmt: str = "int8", layers=None, faulty=None, calib: int = 512, *, msb_only: bool = False,
                 only_bits: tuple | None = None, param: str = "layers"):
        self.param = param
        self.format = ActivationFormat(fmt)
        self.layers = layers
        self.faulty = faulty
        if isinstance(calib, bool) or not isinstance(calib, int) or calib < 1:
            raise SpecError(f"calib must be the number of attacker-split images (>= 1) the activation ranges are "
                            f"calibrated on, got {calib!r}")
        self.calib = int(calib)
        self.msb_only = bool(msb_only)
        self.only_bits = only_bits
        f = self.format
        if only_bits is not None and not any(b < f.bits for b in only_bits):
            raise SpecError(f"bit={'|'.join(map(str, only_bits))}: activation words of format {f.name} have bits "
                            f"0..{f.bits - 1}")

    @property
    def protected(self) -> int:
        from .selection import protected_bits

        f = self.format
        return protected_bits(f.width, f.bits, f.protected, msb_only=self.msb_only, only=self.only_bits)

    def check_model(self, model: nn.Module) -> None:
        """Refuse ``layers`` / ``faulty`` patterns that match no module of ``model`` (before any work)."""
        ActivationMemory.select(model, self.layers, self.faulty, param=self.param)

    def memory(self, qm, model: nn.Module, data) -> ActivationMemory:
        if model is None:
            raise ValueError("activation faults need model= (the module the evaluator runs)")
        return ActivationMemory.build(model, qm, self.format, layers=self.layers, faulty=self.faulty, data=data,
                                      calib=self.calib, param=self.param)

    def baseline(self) -> dict:
        """The clean baseline these faults are measured against (for records)."""
        return {"activations": {"format": self.format.name, "description": self.format.describe(),
                                "layers": "|".join(self.layers) if self.layers else "conv|linear|attention",
                                "calibration": f"attack[0:{self.calib}]" if self.format.calibrated else None}}
