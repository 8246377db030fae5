"""Profiled chips: bit errors from a user-supplied SRAM error map.

File format
-----------
An error map describes an SRAM array of ``rows`` rows, each holding ``words_per_row`` words of ``bits`` bit cells
(column ``c`` of a word = bit ``c`` of the stored word, bit 0 = least significant). It is a NumPy file:

* ``.npy`` with one array of shape ``[rows, words_per_row, bits]``:

  - floating point (float16/32/64): per-cell flip probabilities in [0, 1] (a *probabilistic* map: the chip's
    measured bit error rate per cell);
  - integer (int8 recommended): *stuck-at* cells, ``-1`` = cell works, ``0`` = stuck at 0, ``1`` = stuck at 1.

* ``.npz`` with exactly one of: ``p`` (float probabilities), ``p01`` and ``p10`` (float, same shape: separate
  0->1 and 1->0 probabilities per cell), ``stuck`` (integer stuck-at map); an archive with a single unnamed array
  (``arr_0``, as ``np.savez(path, a)`` writes) is read like a ``.npy`` file. The metadata arrays of a profiled map
  (``voltage_v``, ``nominal_voltage_v``: :mod:`bitbench.configs.voltage`) are ignored here. :func:`save_error_map` writes valid
  files.

Boolean arrays, other shapes, NaN/infinite or out-of-range probabilities, stuck values other than -1/0/1, and maps with
fewer bit columns than the model's bits are refused with a clear error. Columns ``>= m`` of a map with more bit
columns than the model's ``m`` bits are ignored (those storage bits are never attacked).

Mapping onto the model
----------------------
Word ``i`` of the model's flat memory (global index, see docs/patterns.md) is stored in map word
``j = start + i`` (row ``j // words_per_row``, column ``j % words_per_row``), its bit ``b`` in bit cell ``b``.
Pattern ``k`` places the model at ``start = k * shift`` (a different region of the chip per pattern; ``shift=0``:
always the start of the array). With ``tile=true`` the map repeats (``j`` is taken modulo the map's words) so a small
map covers a large model; otherwise a map that is too small for ``start + n_words`` words is refused.

* Probabilistic maps: bit ``b`` of word ``i`` flips iff ``r(s, i, b) < T(p_cell)`` (``T(p01)`` if the stored bit is
  0, ``T(p10)`` if it is 1), with the shared Philox number ``r`` of the *model* word index ``i`` and seed
  ``s = base_seed + k`` -- the flip rule of :func:`kernels.random_flip` with a per-cell threshold. A uniform map of
  probability ``p`` therefore gives bit for bit the pattern of ``random_p{p}`` with the same seeds.
* Stuck-at maps: a cell stuck at ``v`` reads ``v`` whatever was stored (a flip iff the stored bit differs). They are
  deterministic: patterns differ only by their placement (``shift``) and the seed is not used.
* A protected memory (``rquant+secded``) is stored as its whole image: its stored check word ``j`` of a region at
  global index ``offset + j`` (docs/formats.md) sits in map word ``start + offset + j``, bit ``b`` in bit cell ``b``,
  with the same rules (a map needs as many bit columns as the check words have bits). With ``layers`` only data
  words are read from the map.

``patterns`` defaults to 50 for probabilistic maps; for stuck-at maps to 1 when ``shift=0`` (every placement is the
same) and 50 otherwise. Spec example: ``errmap:file=chips/sram_0.5V.npz,shift=4096,tile=true`` (the path may not
contain ',' -- the spec separator).
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch

from bitbench import kernels
from bitbench.configs.registries import register_attack
from bitbench.configs.errors import load_failure_text
from bitbench.configs.fileio import sha256_bytes
from bitbench.configs.spec import SpecError
from bitbench.configs.suite import MAX_PATTERNS
from bitbench.configs.voltage import MAP_METADATA_KEYS

from .base import Attack, Perturbation, check_indices, check_int, check_out
from .random_errors import layer_patterns

__all__ = ["ErrorMap", "ErrorMapData", "load_error_map", "save_error_map", "ErrorMapError"]

_CHUNK = 1 << 18          # words per processing chunk


class ErrorMapError(SpecError):
    """A malformed error-map file, or one that does not fit the model (bad input: exit code 2 on the CLI)."""


class ErrorMapData:
    """A validated error map, flattened to ``[words, bits]`` (map word ``j`` = row ``j // words_per_row``)."""

    def __init__(self, kind: str, shape: tuple, p01: np.ndarray | None = None, p10: np.ndarray | None = None,
                 stuck: np.ndarray | None = None, source: str = "<array>"):
        self.kind = kind                      # 'prob' or 'stuck'
        self.rows, self.words_per_row, self.bits = (int(s) for s in shape)
        self.words = self.rows * self.words_per_row
        self.source = source
        self.sha256: str | None = None        # "sha256:<hex>" of the file it was read from
        self.p01 = p01                        # float64 [words, bits]
        self.p10 = p10
        self.stuck = stuck                    # int8 [words, bits]

    def __repr__(self) -> str:
        return (f"ErrorMapData({self.kind}, rows={self.rows}, words_per_row={self.words_per_row}, bits={self.bits}, "
                f"source={self.source!r})")

    @property
    def rate(self) -> float:
        """Mean flip probability per cell (probabilistic maps; the 0->1 map when p01 != p10) or the fraction of
        stuck cells (stuck-at maps)."""
        if self.kind == "prob":
            return float(self.p01.mean()) if self.p01.size else 0.0
        return float((self.stuck >= 0).mean()) if self.stuck.size else 0.0


def _check_shape(a: np.ndarray, what: str, source: str) -> None:
    if a.ndim != 3 or min(a.shape) < 1:
        raise ErrorMapError(f"error map {source}: {what} must have shape [rows, words_per_row, bits] with every "
                            f"dimension >= 1, got shape {tuple(a.shape)}")


def _prob(a: np.ndarray, what: str, source: str) -> np.ndarray:
    _check_shape(a, what, source)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ErrorMapError(f"error map {source}: {what} contains NaN or infinite probabilities")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ErrorMapError(f"error map {source}: {what} holds flip probabilities, which must be in [0, 1]; "
                            f"found values in [{a.min():g}, {a.max():g}]")
    return a.reshape(-1, a.shape[2])


def _stuck(a: np.ndarray, source: str) -> np.ndarray:
    _check_shape(a, "the stuck-at map", source)
    a64 = a.astype(np.int64)
    bad = ~np.isin(a64, (-1, 0, 1))
    if bad.any():
        raise ErrorMapError(f"error map {source}: a stuck-at map holds -1 (cell ok), 0 (stuck at 0) or 1 (stuck at 1);"
                            f" found {sorted(set(a64[bad].tolist()))[:5]}")
    return a64.astype(np.int8).reshape(-1, a.shape[2])


def _from_array(a: np.ndarray, source: str) -> ErrorMapData:
    if not isinstance(a, np.ndarray):
        raise ErrorMapError(f"error map {source}: expected a NumPy array, got {type(a).__name__}")
    if a.dtype == np.bool_:
        raise ErrorMapError(f"error map {source}: boolean arrays are ambiguous; use float flip probabilities or an "
                            "int8 stuck-at map (-1 ok, 0 stuck-at-0, 1 stuck-at-1)")
    if np.issubdtype(a.dtype, np.floating):
        p = _prob(a, "the probability map", source)
        return ErrorMapData("prob", a.shape, p01=p, p10=p, source=source)
    if np.issubdtype(a.dtype, np.integer):
        return ErrorMapData("stuck", a.shape, stuck=_stuck(a, source), source=source)
    raise ErrorMapError(f"error map {source}: unsupported dtype {a.dtype}; use float (probabilities) or int8 "
                        "(stuck-at)")


def load_error_map(path) -> ErrorMapData:
    """Read and validate an error-map file (see the module docstring). The map's ``sha256`` is the digest of the
    bytes it was read from (the numbers depend on the content, never on the path)."""
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise ErrorMapError(f"error map file {source!r} does not exist")
    try:
        with open(source, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ErrorMapError(f"error map {source}: cannot read it ({e.strerror or e})") from None
    data = _parse_error_map(raw, source)
    data.sha256 = "sha256:" + sha256_bytes(raw)
    return data


def _parse_error_map(raw: bytes, source: str) -> ErrorMapData:
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as e:  # not a NumPy file, pickled objects, truncated archive
        raise ErrorMapError(f"error map {source}: cannot read it as a .npy/.npz file ({load_failure_text(e)})") \
            from None
    if isinstance(loaded, np.ndarray):
        return _from_array(loaded, source)
    with loaded as z:
        keys = set(z.files) - set(MAP_METADATA_KEYS)  # a profiled map's voltage metadata (configs.voltage)
        try:
            if keys == {"arr_0"}:
                return _from_array(z["arr_0"], source)
            if keys == {"p"}:
                a = z["p"]
                if not np.issubdtype(a.dtype, np.floating):
                    raise ErrorMapError(f"error map {source}: 'p' must hold float probabilities, got {a.dtype}")
                p = _prob(a, "'p'", source)
                return ErrorMapData("prob", a.shape, p01=p, p10=p, source=source)
            if keys == {"p01", "p10"}:
                a, b = z["p01"], z["p10"]
                for name, arr in (("p01", a), ("p10", b)):
                    if not np.issubdtype(arr.dtype, np.floating):
                        raise ErrorMapError(f"error map {source}: {name!r} must hold float probabilities, got "
                                            f"{arr.dtype}")
                if a.shape != b.shape:
                    raise ErrorMapError(f"error map {source}: 'p01' {a.shape} and 'p10' {b.shape} differ in shape")
                return ErrorMapData("prob", a.shape, p01=_prob(a, "'p01'", source), p10=_prob(b, "'p10'", source),
                                    source=source)
            if keys == {"stuck"}:
                a = z["stuck"]
                if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
                    raise ErrorMapError(f"error map {source}: 'stuck' must be an integer array (int8), got {a.dtype}")
                return ErrorMapData("stuck", a.shape, stuck=_stuck(a, source), source=source)
        except ErrorMapError:
            raise
        except Exception as e:
            raise ErrorMapError(f"error map {source}: cannot read the archive ({load_failure_text(e)})") from None
    raise ErrorMapError(f"error map {source}: an .npz map holds exactly one of 'p', 'p01'+'p10' or 'stuck' "
                        f"(or a single unnamed array); found keys {sorted(keys)}")


def save_error_map(path, *, p=None, p01=None, p10=None, stuck=None) -> None:
    """Write a valid error-map ``.npz`` (exactly one of ``p``, ``p01``+``p10``, ``stuck``; arrays of shape
    ``[rows, words_per_row, bits]``). The arrays are validated first."""
    given = {k: v for k, v in (("p", p), ("p01", p01), ("p10", p10), ("stuck", stuck)) if v is not None}
    if set(given) not in ({"p"}, {"p01", "p10"}, {"stuck"}):
        raise ValueError("give exactly one of p=, p01= and p10= together, or stuck=")
    arrays = {k: np.asarray(v, dtype=np.int8 if k == "stuck" else np.float64) for k, v in given.items()}
    for k, v in arrays.items():
        if k == "stuck":
            _stuck(v, "<stuck>")
        else:
            _prob(v, repr(k), "<arrays>")
    np.savez(path, **arrays)


def _bits_to_mask(cells: torch.Tensor) -> torch.Tensor:
    """bool [n, m] -> int64 [n] with bit b set where cells[:, b]."""
    m = cells.shape[1]
    shifts = torch.arange(m, dtype=torch.int64, device=cells.device)
    return (cells.to(torch.int64) << shifts).sum(1)


@register_attack("errmap", pattern_help=None)
class ErrorMap(Attack):
    """Profiled chip: bit errors from a user-supplied SRAM error map (per-cell flip probabilities or stuck-at cells).

    Args:
        file: path of the .npy/.npz error map (required; format in the attacks.error_map docstring).
        patterns: number of patterns; none = 50, or 1 for a stuck-at map with shift 0 (all placements equal).
        shift: pattern k stores the model starting at map word k * shift (a different chip region per pattern).
        base_seed: probabilistic maps: pattern k uses seed base_seed + k (the shared Philox numbers).
        tile: repeat the map when the model needs more words than it holds (else such a map is refused).
        layers: only these tensors (fnmatch patterns separated by '|'); the others stay clean.
    """

    kind = "random"

    def __init__(self, file: str | None = None, patterns: int | None = None, shift: int = 0, base_seed: int = 100,
                 tile: bool = False, layers: str | None = None):
        if file is None or str(file).strip() == "" or str(file).lower() == "none":
            raise SpecError("errmap needs file=PATH of a .npy/.npz error map (see attacks.error_map)")
        self.file = str(file)
        self.map = load_error_map(self.file)
        self.shift = check_int(shift, "shift", 0)
        self.tile = bool(tile)
        if patterns is None:
            patterns = 1 if (self.map.kind == "stuck" and self.shift == 0) else 50
        self.patterns = check_int(patterns, "patterns", 1, MAX_PATTERNS)
        self.base_seed = check_int(base_seed, "base_seed", 0, (1 << 64) - self.patterns)
        self.layers = layer_patterns(layers)
        self.rate = self.map.rate
        if self.map.kind == "prob":
            self._t01 = kernels.thresholds(self.map.p01)
            self._t10 = kernels.thresholds(self.map.p10)
        else:
            self._stuck = torch.from_numpy(self.map.stuck)

    def num_perturbations(self) -> int:
        return self.patterns

    def input_digests(self) -> dict:
        return {"file": self.map.sha256}

    def check(self, qm) -> None:
        self.check_fits(qm)
        super().check(qm)

    def seed(self, k: int) -> int | None:
        return self.base_seed + k if self.map.kind == "prob" else None

    def start(self, k: int) -> int:
        s = k * self.shift
        return s % self.map.words if self.tile else s

    def check_fits(self, qm, ks=None) -> None:
        """Refuse a map with too few bit columns or (without tile) too few words for the model (for a protected
        memory: for its whole image, data and stored check words)."""
        if self.map.bits < qm.bits:
            raise ErrorMapError(f"error map {self.file} has {self.map.bits} bit columns per word but the model's "
                                f"words have {qm.bits} attackable bits")
        for r in self._regions(qm):
            if self.map.bits < r.bits:
                raise ErrorMapError(f"error map {self.file} has {self.map.bits} bit columns per word but the "
                                    f"{r.name} check words of the protected memory have {r.bits} bits")
        ks = range(self.patterns) if ks is None else ks
        if not self.tile and len(ks):
            k = max(ks)
            words = qm.image_words if self._regions(qm) else qm.n_words
            need = self.start(k) + words
            if need > self.map.words:
                raise ErrorMapError(
                    f"error map {self.file} holds {self.map.words} words ({self.map.rows} rows x "
                    f"{self.map.words_per_row} words) but the model needs {words} words"
                    + (" (data and check words)" if words != qm.n_words else "")
                    + (f" starting at word {self.start(k)} (pattern {k}, shift={self.shift})" if self.start(k) else "")
                    + "; use a larger map or tile=true to repeat it")

    def _regions(self, qm) -> list:
        """The stored check regions of a protected memory that this map perturbs (none with ``layers``)."""
        return [] if self.layers is not None else list(qm.check_regions)

    # -- per-chunk perturbation ---------------------------------------------------------------------------------
    def _map_index(self, a: int, b: int, start: int) -> torch.Tensor:
        j = torch.arange(a, b, dtype=torch.int64) + start
        return j % self.map.words if self.tile else j

    def _prob_chunk(self, m: int, prot: int, x: torch.Tensor, a: int, j: torch.Tensor, seed: int) -> torch.Tensor:
        """Xor mask (int64 patterns) for clean words x of m attackable bits at global indices a.. stored in map
        words j: the kernels' flip rule with each cell's own thresholds."""
        dev = x.device
        mask = kernels.threshold_flip_mask(x, self._t01[j, :m].to(dev), self._t10[j, :m].to(dev), seed=seed, bits=m,
                                           protected=prot, offset=a)
        return kernels.to_pattern(mask)

    def _stuck_chunk(self, m: int, prot: int, x: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Perturbed int64 patterns of clean words x (m attackable bits) stored in map words j."""
        dev = x.device
        s = self._stuck[j, :m]
        smask = (_bits_to_mask(s >= 0) & ~prot).to(dev)
        vmask = (_bits_to_mask(s == 1) & ~prot).to(dev)
        u = kernels.to_pattern(x)
        return (u & ~smask) | (vmask & smask)

    def pattern(self, qm, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Perturbed codes of pattern ``k`` (into ``out`` if given)."""
        self.check_fits(qm, [k])
        if out is None:
            out = torch.empty_like(qm.codes)
        out.copy_(qm.codes)
        tensors = range(len(qm.names)) if self.layers is None else qm.select(self.layers)
        ranges = [(0, qm.n_words)] if self.layers is None else [(qm.offsets[t], qm.offsets[t] + qm.lengths[t])
                                                                 for t in tensors]
        for lo, hi in ranges:
            self._perturb(qm.codes, out, lo, hi, 0, qm.bits, int(qm.protected), k)
        return out

    def _perturb(self, words: torch.Tensor, out: torch.Tensor, lo: int, hi: int, offset: int, m: int, prot: int,
                 k: int) -> None:
        """out[lo:hi] = words[lo:hi] as read from the map (their global indices start at ``offset``)."""
        start, seed = self.start(k), self.seed(k)
        for a in range(lo, hi, _CHUNK):
            b = min(hi, a + _CHUNK)
            x = words[a:b]
            j = self._map_index(offset + a, offset + b, start)
            if self.map.kind == "prob":
                u = kernels.to_pattern(x) ^ self._prob_chunk(m, prot, x, offset + a, j, seed)
            else:
                u = self._stuck_chunk(m, prot, x, j)
            out[a:b] = kernels.from_pattern(u, x.dtype)

    def check_pattern(self, qm, k: int) -> list | None:
        """The stored check words of a protected memory as read from the map in pattern ``k`` (check word j of a
        region sits in map word ``start + offset + j``, its bit b in bit cell b); None without check regions."""
        regions = self._regions(qm)
        if not regions:
            return None
        outs = []
        for r in regions:
            o = torch.empty_like(r.words)
            self._perturb(r.words, o, 0, r.n_words, r.offset, r.bits, 0, k)
            outs.append(o)
        return outs

    def perturbations(self, qm, *, model=None, data=None, out=None, indices=None):
        out = check_out(qm, out)
        ks = check_indices(indices, self.patterns)
        self.check_fits(qm, ks)
        if self.layers is not None:
            qm.select(self.layers)
        for k in ks:
            codes = self.pattern(qm, k, out)
            yield Perturbation(codes=codes, index=k, seed=self.seed(k), check=self.check_pattern(qm, k),
                               info={"flips": kernels.hamming_total(qm.codes, codes, bits=qm.bits),
                                     "map": self.map.kind, "start": self.start(k)})
