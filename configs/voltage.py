"""Voltage profiles: a memory's measured bit error rate (and optionally energy per access) against supply voltage.

A profile is data the user measured on a chip; the benchmark never invents one (the packaged ``example_sram``
profile is synthetic and says so). Two forms, both read by :func:`load_profile`:

Curve file (CSV)
----------------
UTF-8 text. Lines whose first non-blank character is ``#`` are comments; one of them may be the metadata line
``# nominal_voltage_v = 1.0`` (the voltage savings are measured against, in volts). Blank lines are skipped. The
first other line is the header, then one row per measured voltage (any order; they are sorted):

=================  ========================================================================================
column             meaning
=================  ========================================================================================
``voltage_v``      supply voltage in volts (required; > 0 and < 10: millivolts are refused)
``ber``            bit error rate, a fraction in [0, 1] (0.0156 = 1.56%): the flip probability of a cell
``ber_01``,        instead of ``ber``: separate rates of 0->1 flips (a stored 0 reads 1) and of 1->0 flips
``ber_10``         (both columns, never with ``ber``)
``energy``         optional: energy per access at that voltage, in any unit (only ratios are used); > 0,
                   non-decreasing with voltage; replaces the default V^2 energy model (:mod:`.energy`)
=================  ========================================================================================

Rules (a :class:`ProfileError` names the file, line and value): at least two rows; no duplicate voltages; numbers
only (no ``%``, no NaN or inf, no empty fields); no negative values; rates must not increase with voltage (each
rate column on its own; equal neighbours are allowed: a plateau, e.g. 0 above some voltage); the nominal voltage
(the metadata line, or the ``nominal_voltage`` argument, which takes precedence) is required and may not lie below
the lowest measured voltage, and with an ``energy`` column it must lie within the measured range (its energy is
interpolated there). Example::

    # nominal_voltage_v = 1.0
    voltage_v,ber
    0.50,0.0156
    0.55,0.0023
    1.00,0

Folder of profiled error maps
-----------------------------
A folder with one error map per measured voltage: ``.npz`` files in the error-map format of the ``errmap``
attack (``p``, or ``p01`` + ``p10``, or ``stuck``: arrays of shape [rows, words_per_row, bits], see
``bitbench.attacks.error_map``) plus metadata arrays: ``voltage_v`` (required, a single float in volts) and
``nominal_voltage_v`` (optional; where several maps hold it they must agree; one of them, or the
``nominal_voltage`` argument, must give it). :func:`save_profiled_map` writes such files. Other files are ignored,
except ``.npy`` maps, which cannot hold a voltage and are refused. Each map's rates are its cell averages: ``p``
-> the mean probability (both directions); ``p01``/``p10`` -> their means; ``stuck`` -> 0->1 rate = the share of
cells stuck at 1, 1->0 rate = the share stuck at 0 (a stuck cell corrupts a stored bit of the other value). The
same rules as for curves then apply to the maps' rates. For the evaluation itself each voltage's map is used as
a profiled chip (its cells and flip directions), not its average rate.

A profile's single *rate* per voltage (what a tolerable symmetric rate p* is compared with) is the larger of its
two directions (``max(ber_01, ber_10)``): conservative, as the share of stored 0s and 1s is the model's.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import UsageError
from .fileio import atomic_write_bytes, sha256_bytes

__all__ = ["ProfileError", "VoltageProfile", "load_profile", "read_curve", "read_profiled_map",
           "save_profiled_map", "packaged_profiles", "MAX_VOLTAGE", "CURVE_COLUMNS", "MAP_METADATA_KEYS"]

MAX_VOLTAGE = 10.0          # volts; larger numbers are taken for millivolts and refused
CURVE_COLUMNS = ("voltage_v", "ber", "ber_01", "ber_10", "energy")
MAP_DATA_KEYS = ({"p"}, {"p01", "p10"}, {"stuck"})
MAP_METADATA_KEYS = ("voltage_v", "nominal_voltage_v")
_NOMINAL_RE = re.compile(r"#\s*nominal_voltage_v\s*=\s*(\S*)\s*$")


class ProfileError(UsageError):
    """A voltage profile that cannot be read or breaks the format's rules (bad input: exit code 2)."""


@dataclass
class VoltageProfile:
    """A validated profile. Lists are parallel and sorted by ascending voltage; rates are fractions.

    ``kind``: ``'curve'`` or ``'error_maps'``; ``maps``: the error-map file of each voltage (error-map profiles);
    ``sha256``: ``"sha256:<hex>"`` of the content (the curve file's bytes; for maps, the digest of the lines
    ``<voltage>:<file digest>``), so that results depend on the content, never on the path."""

    voltages: list
    rate01: list
    rate10: list
    nominal_voltage: float
    kind: str
    source: str
    energy: list | None = None
    maps: list | None = None
    sha256: str | None = None
    name: str | None = field(default=None)

    @property
    def rates(self) -> list:
        """The single rate per voltage compared with a tolerable symmetric rate: max(0->1, 1->0)."""
        return [max(a, b) for a, b in zip(self.rate01, self.rate10)]

    @property
    def symmetric(self) -> bool:
        return self.rate01 == self.rate10

    def to_json(self) -> dict:
        return {"kind": self.kind, "source": self.source, "sha256": self.sha256, "nominal_voltage": self.nominal_voltage,
                "voltages": self.voltages, "rate01": self.rate01, "rate10": self.rate10, "energy": self.energy,
                "maps": self.maps}


# ------------------------------------------------------------------------------------------------------ checks
def _check_voltage(v: float, where: str, what: str = "voltage") -> float:
    if not math.isfinite(v) or v <= 0:
        raise ProfileError(f"{where}: {what} {v!r} must be a positive number of volts")
    if v >= MAX_VOLTAGE:
        raise ProfileError(f"{where}: {what} {v:g} is not in volts (voltages are in volts, below {MAX_VOLTAGE:g}; "
                           f"{v:g} looks like millivolts: write {v / 1000:g})")
    return v


def _check_rate(r: float, where: str, what: str) -> float:
    if not math.isfinite(r):
        raise ProfileError(f"{where}: {what} is {r!r}; rates must be finite numbers")
    if r < 0:
        raise ProfileError(f"{where}: {what} {r:g} is negative; rates are fractions in [0, 1]")
    if r > 1:
        raise ProfileError(f"{where}: {what} {r:g} is above 1; rates are fractions (0.0156 = 1.56%), not percent")
    return r


def _validate(points: list, source: str, nominal: float | None, has_energy: bool, what: str) -> tuple:
    """points: [(voltage, r01, r10, energy or None, label)] -> sorted, checked lists + nominal voltage."""
    if len(points) < 2:
        raise ProfileError(f"{source}: a profile needs at least two measured voltages, found {len(points)}")
    points = sorted(points, key=lambda t: t[0])
    for a, b in zip(points, points[1:]):
        if a[0] == b[0]:
            raise ProfileError(f"{source}: voltage {a[0]:g} V appears twice ({a[4]} and {b[4]}); give one "
                               f"{what} per voltage (average repeated measurements)")
    symmetric = all(p[1] == p[2] for p in points)
    for k, name in ((1, "rate" if symmetric else "0->1 rate"), (2, "1->0 rate"))[:1 if symmetric else 2]:
        for a, b in zip(points, points[1:]):
            if b[k] > a[k]:
                raise ProfileError(f"{source}: the bit error {name} rises with voltage: {a[k]:g} at {a[0]:g} V "
                                   f"({a[4]}) but {b[k]:g} at {b[0]:g} V ({b[4]}); rates must not increase with "
                                   "voltage (measurement noise? average repeated measurements)")
    if has_energy:
        for a, b in zip(points, points[1:]):
            if b[3] < a[3]:
                raise ProfileError(f"{source}: energy per access falls with voltage: {a[3]:g} at {a[0]:g} V "
                                   f"({a[4]}) but {b[3]:g} at {b[0]:g} V ({b[4]}); it must not decrease as the "
                                   "voltage rises")
    if nominal is None:
        raise ProfileError(f"{source}: no nominal voltage (the voltage savings are measured against); add the "
                           "line '# nominal_voltage_v = <volts>' to the file, or give it explicitly"
                           if what == "row" else
                           f"{source}: no nominal voltage; store 'nominal_voltage_v' in one of the maps "
                           "(save_profiled_map(..., nominal_voltage_v=...)) or give it explicitly")
    _check_voltage(nominal, source, "nominal voltage")
    lo, hi = points[0][0], points[-1][0]
    if nominal < lo:
        raise ProfileError(f"{source}: nominal voltage {nominal:g} V lies below every measured voltage "
                           f"({lo:g}-{hi:g} V): the profile says nothing about lowering the voltage from it")
    if has_energy and nominal > hi:
        raise ProfileError(f"{source}: nominal voltage {nominal:g} V lies above the measured range ({lo:g}-{hi:g} "
                           "V) but the energy column is only interpolated within it; measure the nominal "
                           "voltage too")
    return ([p[0] for p in points], [p[1] for p in points], [p[2] for p in points],
            [p[3] for p in points] if has_energy else None, nominal)


# ------------------------------------------------------------------------------------------------------- curves
def _number(text: str, where: str, column: str) -> float:
    t = text.strip()
    if t == "":
        raise ProfileError(f"{where}: empty {column!r} field")
    if t.endswith("%"):
        raise ProfileError(f"{where}: {column} {t!r}: write fractions, not percent (1.56% = 0.0156)")
    try:
        x = float(t)
    except ValueError:
        raise ProfileError(f"{where}: {column} {t!r} is not a number") from None
    if not math.isfinite(x):
        raise ProfileError(f"{where}: {column} is {t!r}; values must be finite numbers")
    return x


def read_curve(text: str, source: str = "<curve>", *, nominal_voltage: float | None = None) -> VoltageProfile:
    """Parse and validate a curve file's text (format: module docstring). ``nominal_voltage`` (volts) replaces the
    file's ``# nominal_voltage_v`` line."""
    nominal, header, rows = None, None, []
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            if "nominal_voltage_v" in s:
                m = _NOMINAL_RE.fullmatch(s)
                if not m:
                    raise ProfileError(f"{source}:{lineno}: expected '# nominal_voltage_v = <volts>', got {s!r}")
                if nominal is not None:
                    raise ProfileError(f"{source}:{lineno}: a second nominal_voltage_v line")
                nominal = _check_voltage(_number(m.group(1), f"{source}:{lineno}", "nominal_voltage_v"),
                                         f"{source}:{lineno}", "nominal voltage")
            continue
        fields = [f.strip() for f in next(csv.reader([line]))]
        if header is None:
            header = fields
            unknown = [c for c in header if c not in CURVE_COLUMNS]
            if unknown:
                raise ProfileError(f"{source}:{lineno}: unknown column(s) {unknown}; allowed: voltage_v (volts), "
                                   "ber or ber_01 + ber_10 (fractions), energy (optional)")
            dup = sorted({c for c in header if header.count(c) > 1})
            if dup:
                raise ProfileError(f"{source}:{lineno}: column(s) {dup} appear twice")
            if "voltage_v" not in header:
                raise ProfileError(f"{source}:{lineno}: the header needs a 'voltage_v' column (volts)")
            has_ber, has_dir = "ber" in header, ("ber_01" in header, "ber_10" in header)
            if has_ber and any(has_dir):
                raise ProfileError(f"{source}:{lineno}: give either 'ber' or 'ber_01' and 'ber_10', not both")
            if not has_ber and not all(has_dir):
                raise ProfileError(f"{source}:{lineno}: the header needs a rate column: 'ber', or both 'ber_01' "
                                   "(0->1 flips) and 'ber_10' (1->0 flips)")
            continue
        where = f"{source}:{lineno}"
        if len(fields) != len(header):
            raise ProfileError(f"{where}: {len(fields)} fields but the header has {len(header)} ({', '.join(header)})")
        row = {c: _number(f, where, c) for c, f in zip(header, fields)}
        v = _check_voltage(row["voltage_v"], where)
        r01 = _check_rate(row.get("ber", row.get("ber_01")), where, "ber" if "ber" in row else "ber_01")
        r10 = _check_rate(row.get("ber", row.get("ber_10")), where, "ber" if "ber" in row else "ber_10")
        e = row.get("energy")
        if e is not None and e <= 0:
            raise ProfileError(f"{where}: energy {e:g} must be positive (energy per access, any unit)")
        rows.append((v, r01, r10, e, f"line {lineno}"))
    if header is None:
        raise ProfileError(f"{source}: no header line (expected e.g. 'voltage_v,ber')")
    if nominal_voltage is not None:
        nominal = _check_voltage(float(nominal_voltage), source, "nominal voltage")
    vs, r01, r10, energy, nominal = _validate(rows, source, nominal, "energy" in header, "row")
    return VoltageProfile(vs, r01, r10, nominal, "curve", source, energy=energy,
                          sha256="sha256:" + sha256_bytes(text.encode("utf-8")))


# --------------------------------------------------------------------------------------------------- error maps
def _map_arrays(z, keys: set, source: str) -> tuple[float, float]:
    """Validate a map's data arrays -> (0->1 rate, 1->0 rate): the cell averages."""
    def shaped(a, name):
        if a.ndim != 3 or min(a.shape) < 1:
            raise ProfileError(f"{source}: {name!r} must have shape [rows, words_per_row, bits] with every "
                               f"dimension >= 1, got {tuple(a.shape)}")
        return a

    def prob(name):
        a = shaped(z[name], name)
        if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.floating):
            raise ProfileError(f"{source}: {name!r} must hold float flip probabilities, got {a.dtype}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ProfileError(f"{source}: {name!r} contains NaN or infinite probabilities")
        if a.min() < 0 or a.max() > 1:
            raise ProfileError(f"{source}: {name!r} holds flip probabilities, which must be in [0, 1]; found "
                               f"[{a.min():g}, {a.max():g}]")
        return float(a.mean())

    if keys == {"p"}:
        r = prob("p")
        return r, r
    if keys == {"p01", "p10"}:
        if z["p01"].shape != z["p10"].shape:
            raise ProfileError(f"{source}: 'p01' {z['p01'].shape} and 'p10' {z['p10'].shape} differ in shape")
        return prob("p01"), prob("p10")
    a = shaped(z["stuck"], "stuck")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ProfileError(f"{source}: 'stuck' must be an integer array (int8), got {a.dtype}")
    a = a.astype(np.int64)
    bad = ~np.isin(a, (-1, 0, 1))
    if bad.any():
        raise ProfileError(f"{source}: a stuck-at map holds -1 (cell ok), 0 (stuck at 0) or 1 (stuck at 1); found "
                           f"{sorted(set(a[bad].tolist()))[:5]}")
    return float((a == 1).mean()), float((a == 0).mean())


def _scalar(z, key: str, source: str) -> float:
    a = z[key]
    if a.size != 1 or a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating)
                                                  or np.issubdtype(a.dtype, np.integer)):
        raise ProfileError(f"{source}: {key!r} must be a single number (volts), got an array of shape "
                           f"{tuple(a.shape)} and dtype {a.dtype}")
    return _check_voltage(float(a.reshape(-1)[0]), source, key)


def read_profiled_map(path) -> dict:
    """Read one profiled error map -> ``{"path", "voltage", "nominal_voltage" (or None), "rate01", "rate10",
    "sha256"}`` (the map's arrays are validated, their cell averages kept)."""
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except OSError as e:
        raise ProfileError(f"error map {source}: cannot read it ({e.strerror or e})") from None
    return _parse_map(raw, source)


def _parse_map(raw: bytes, source: str) -> dict:
    try:
        z = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as e:  # not a NumPy file, pickled objects, a truncated archive
        raise ProfileError(f"error map {source}: cannot read it as an .npz file ({type(e).__name__}: {e})") from None
    if isinstance(z, np.ndarray):
        raise ProfileError(f"error map {source}: a profiled map must be an .npz archive with a 'voltage_v' array, "
                           "not a single .npy array")
    with z:
        try:
            keys = set(z.files)
            if "voltage_v" not in keys:
                raise ProfileError(f"error map {source}: no 'voltage_v' array (the voltage, in volts, this map was "
                                   "profiled at)")
            data = keys - set(MAP_METADATA_KEYS)
            if data not in MAP_DATA_KEYS:
                raise ProfileError(f"error map {source}: holds exactly one of 'p', 'p01'+'p10' or 'stuck' besides "
                                   f"the metadata {list(MAP_METADATA_KEYS)}; found {sorted(keys)}")
            r01, r10 = _map_arrays(z, data, f"error map {source}")
            volt = _scalar(z, "voltage_v", f"error map {source}")
            nom = _scalar(z, "nominal_voltage_v", f"error map {source}") if "nominal_voltage_v" in keys else None
        except ProfileError:
            raise
        except Exception as e:
            raise ProfileError(f"error map {source}: cannot read the archive ({type(e).__name__}: {e})") from None
    return {"path": source, "voltage": volt, "nominal_voltage": nom, "rate01": r01, "rate10": r10,
            "sha256": "sha256:" + sha256_bytes(raw)}


def save_profiled_map(path, *, voltage_v: float, nominal_voltage_v: float | None = None, p=None, p01=None, p10=None,
                      stuck=None) -> None:
    """Write a profiled error map (``.npz``, atomically): exactly one of ``p``, ``p01`` + ``p10``, ``stuck``
    (arrays of shape [rows, words_per_row, bits]) and the voltage it was profiled at (volts). The content is
    validated before anything is written (:class:`ProfileError`)."""
    given = {k: v for k, v in (("p", p), ("p01", p01), ("p10", p10), ("stuck", stuck)) if v is not None}
    if set(given) not in MAP_DATA_KEYS:
        raise ValueError("give exactly one of p=, p01= and p10= together, or stuck=")
    arrays = {k: np.asarray(v, dtype=np.int8 if k == "stuck" else np.float64) for k, v in given.items()}
    arrays["voltage_v"] = np.float64(voltage_v)
    if nominal_voltage_v is not None:
        arrays["nominal_voltage_v"] = np.float64(nominal_voltage_v)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    _parse_map(raw, os.fspath(path))
    atomic_write_bytes(path, raw)


def _read_map_folder(folder: Path, nominal_voltage: float | None) -> VoltageProfile:
    source = str(folder)
    npy = sorted(p.name for p in folder.glob("*.npy"))
    if npy:
        raise ProfileError(f"{source}: {npy[0]} is a .npy map, which cannot hold its voltage; save it as .npz with "
                           "a 'voltage_v' array (save_profiled_map)")
    files = sorted(p for p in folder.glob("*.npz") if p.is_file())
    if not files:
        raise ProfileError(f"{source}: no .npz error maps in this folder (one per measured voltage)")
    maps = [read_profiled_map(p) for p in files]
    noms = {m["nominal_voltage"] for m in maps if m["nominal_voltage"] is not None}
    if len(noms) > 1:
        raise ProfileError(f"{source}: the maps disagree on nominal_voltage_v ({', '.join(f'{v:g}' for v in sorted(noms))} V)")
    nominal = float(nominal_voltage) if nominal_voltage is not None else (noms.pop() if noms else None)
    pts = [(m["voltage"], m["rate01"], m["rate10"], None, os.path.basename(m["path"])) for m in maps]
    vs, r01, r10, _, nominal = _validate(pts, source, nominal, False, "map")
    by_v = {m["voltage"]: m for m in maps}
    digest = sha256_bytes("".join(f"{v!r}:{by_v[v]['sha256']}\n" for v in vs).encode())
    return VoltageProfile(vs, r01, r10, nominal, "error_maps", source, maps=[by_v[v]["path"] for v in vs],
                          sha256="sha256:" + digest)


# ------------------------------------------------------------------------------------------------------ loading
def _packaged_dir() -> Path | None:
    try:
        p = Path(str(resources.files("bitbench.configs"))) / "profiles"
        return p if p.is_dir() else None
    except (ModuleNotFoundError, TypeError):  # pragma: no cover
        return None


def packaged_profiles() -> list[str]:
    """Names of the packaged profiles (``configs/profiles/*.csv``), e.g. ``example_sram``."""
    d = _packaged_dir()
    return sorted(p.stem for p in d.glob("*.csv")) if d else []


def load_profile(path_or_name, *, nominal_voltage: float | None = None) -> VoltageProfile:
    """Read a profile: a curve file, a folder of profiled error maps, or the name of a packaged profile
    (``example_sram``). ``nominal_voltage`` (volts) replaces the profile's own."""
    s = os.fspath(path_or_name)
    p = Path(s)
    if p.is_dir():
        return _read_map_folder(p, nominal_voltage)
    if not p.is_file():
        d = _packaged_dir()
        if d is not None and "/" not in s and os.sep not in s and (d / f"{s}.csv").is_file():
            prof = load_profile(d / f"{s}.csv", nominal_voltage=nominal_voltage)
            prof.name = s
            return prof
        raise ProfileError(f"voltage profile {s!r}: no such file or folder, and not a packaged profile (packaged: "
                           f"{', '.join(packaged_profiles()) or 'none'})")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ProfileError(f"voltage profile {s}: cannot read it ({e.strerror or e})") from None
    if raw[:6] == b"\x93NUMPY" or raw[:2] == b"PK":
        raise ProfileError(f"voltage profile {s}: a single error map is not a profile; put one map per voltage "
                           "in a folder and give the folder")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProfileError(f"voltage profile {s}: not UTF-8 text (expected a CSV curve file)") from None
    prof = read_curve(text, s, nominal_voltage=nominal_voltage)
    prof.sha256 = "sha256:" + sha256_bytes(raw)
    return prof
