"""The leaderboard entry format and its validator (pure Python: no torch).

One JSON file per leaderboard row: ``leaderboard/entries/<suite>/<name>.json``. The tables and plots are a pure
function of these files (RobustBench style). An entry is refused, with the exact field and the reason, when it is
malformed, incomplete, or measured under another protocol than its suite's.

Entry format ``bitbench.leaderboard_entry/1``
--------------------------------------------
Errors are fractions in [0, 1] (tables show percent). Field order as written by :func:`leaderboard.submit`.

=================  ======================  =====================================================================
field              type                    meaning
=================  ======================  =====================================================================
``format``         str                     ``"bitbench.leaderboard_entry/1"``
``suite``          str                     suite name; must equal the entry's folder and name a suite TOML
``name``           str                     row identifier ``[A-Za-z0-9._-]+``; must equal the file name stem
``model``          str                     architecture (``lenet``, ``simplenet``, ...)
``model_options``  object                  options of the model builder (may be ``{}``)
``n_params``       int >= 1 or null        parameters in the quantized memory (words); null: unknown (paper)
``model_source``   ``"trained"|"user"``    (optional, default ``"trained"``) trained by this benchmark with the
                                           defense's recipe, or the user's own weights (``model`` is then their
                                           builder and ``defense`` only the storage format)
``checkpoint``     object (optional)       ``{"path": str, "sha256": str}``: the weights file (a state dict) the
                                           results were measured on, ``path`` relative to the entry's folder,
                                           ``sha256`` the file's SHA-256 (64 hex digits); ``python -m benchmark
                                           run --entry FILE`` re-runs the attacks on it
``defense``        str                     canonical defense spec (``randbet:p=0.05``)
``defense_name``   str                     registry name (``randbet``)
``defense_params`` object                  every defense parameter, defaults filled in
``bits``           int in [1, 32]          bits per weight (the memory's word width); must equal ``protocol.bits`` unless
                                           the defense sets its own width (``width_follows_suite``)
``protocol``       object                  ``{dataset, eval_split, bits, rates, patterns, base_seed}``: the
                                           suite's protocol; must equal it (every suite on the leaderboard pins
                                           its ``eval_split``: only results on the same images are ranked)
``clean_err``      number in [0, 1]        error of the clean quantized model (null allowed for paper rows)
``results``        [object]                one per attack, see below (sorted by rate, then attack)
``version``        str or null             package version that produced the numbers (null for paper rows)
``git_rev``        str or null             git revision, if known (optional)
``config_hash``    str or null             hash over the per-result configuration hashes (null for paper rows)
``seeds``          object                  ``{"train": int or null, "patterns": [int] or null}``; pattern seeds
                                           must be ``base_seed .. base_seed + patterns - 1``
``device``         str or null             where it ran, e.g. ``cpu``
``date``           str or null             ISO 8601 (UTC) date of the newest result (or the paper's date)
``citation``       str or null             how to cite the defense / paper (required for paper rows)
``link``           str or null             URL of the paper or code (``http(s)://``)
``reported_by``    ``"benchmark"|"paper"`` reproduced by this benchmark, or copied from a paper (marked † in
                                           tables)
``notes``          [str]                   optional remarks shown under the table (e.g. a ">12%" value that is not
                                           a number and was left missing)
``memory_overhead`` number >= 0 (optional) protected defenses (``rquant+secded``): check bits / data bits of
                                           the memory; absent: 0 (no protection)
=================  ======================  =====================================================================

Each item of ``results``:

====================  ======================  ==================================================================
``attack``            str                     canonical attack spec (``random_p0.01``, ``bfa_n20``)
``rate``              number in [0, 1] / null bit error rate of a random attack; one of the protocol's rates
``flips``             int >= 0 or null        bit-flip budget of an adversarial attack (optional)
``rerr``              object or null          ``{mean, std, min, max}`` over patterns, fractions; min <= mean <=
                                              max. Paper rows: std/min/max may be null, and ``rerr`` itself may
                                              be null (a value the paper does not give as a number)
``per_pattern_rerr``  [number]                one per pattern (length ``protocol.patterns``); ``rerr`` (mean, std,
                                              min, max) is recomputed from it and must match. Required for
                                              benchmark rows (optional for paper rows)
``n_patterns``        int (optional)          must equal ``protocol.patterns``
``config_hash``       str (optional)          the result record's configuration hash
``note``              str (optional)          remark on this value (e.g. "reported as >12%")
``target``            object (optional)       adversarial curves: ``{metric: "err"|"asr", value}`` of
                                              ``flips_to_target`` (null: the attack has none, e.g. the budgeted
                                              attack)
``flips_to_target``   [int or null]           one per trial (``n_patterns`` trials): first flip count at which
                                              the metric reached the target; null = never (needs ``target``)
``curve``             object (optional)       ``{flips: [n, ...] increasing, err: [[per trial] per n], asr: ...}``:
                                              the evaluation metric under each flip budget n, per trial
``decode_ms``         number >= 0 (optional)  protected defenses: mean decode time per pattern (ms)
``detection``         number in [0, 1] / null checksum stages: share of the flipped data bits inside flagged groups
                                              over all patterns (optional; null: nothing flipped)
====================  ======================  ==================================================================

Rules: rates are unique; a result either has a ``rate`` from the protocol's rates or an ``attack`` listed in the
suite's extra ``attacks``; entries ``reported_by: "benchmark"`` must cover every rate of the suite with a full
``rerr`` and carry ``version``, ``config_hash`` and ``clean_err``; ``reported_by: "paper"`` entries may cover a
subset and must have a ``citation``. Unknown fields are refused (typos would otherwise vanish silently).

The suite and its protocol: :mod:`.suite`.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime
from typing import Any

from .errors import UsageError
from .record import RECORD_FORMAT, Summary
from .spec import SpecError, parse_spec, split_stages
from .suite import Suite, same_rate

__all__ = ["width_follows_suite", "FORMAT", "RECORD_FORMAT", "REPORTED_BY", "PROTOCOL_FIELDS", "ENTRY_FIELDS", "RESULT_FIELDS", "NAME_RE",
           "MODEL_SOURCES", "CHECKPOINT_FIELDS", "CURVE_RESULT_FIELDS", "EntryError", "validate_entry", "show_value"]

FORMAT = "bitbench.leaderboard_entry/1"
REPORTED_BY = ("benchmark", "paper")
PROTOCOL_FIELDS = ("dataset", "eval_split", "bits", "rates", "patterns", "base_seed")
ENTRY_FIELDS = ("format", "suite", "name", "model", "model_options", "n_params", "model_source", "checkpoint",
                "defense", "defense_name",
                "defense_params", "bits", "protocol", "clean_err", "results", "version", "git_rev", "config_hash",
                "seeds", "device", "date", "citation", "link", "reported_by", "notes", "memory_overhead")
# fields that may be absent (the rest must be present, possibly null where the type allows)
_OPTIONAL_FIELDS = {"git_rev", "notes", "defense_name", "model_source", "checkpoint", "memory_overhead"}
MODEL_SOURCES = ("trained", "user")
CHECKPOINT_FIELDS = ("path", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")
RESULT_FIELDS = ("attack", "rate", "flips", "rerr", "per_pattern_rerr", "n_patterns", "config_hash", "note", "target",
                 "flips_to_target", "curve", "decode_ms", "detection")
CURVE_RESULT_FIELDS = ("target", "flips_to_target", "curve")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOL = 1e-6  # tolerance of consistency checks between stored floats
_SUMMARY_TOL = 1e-9  # a summary recomputed from per-pattern values must match to rounding (an edit never does)


class EntryError(UsageError):
    """A refused entry or result record: ``[source: ]field: reason``."""

    def __init__(self, field: str, reason: str, source: str | os.PathLike | None = None):
        self.field = field
        self.reason = reason
        self.source = None if source is None else str(source)
        super().__init__(self._message())

    def _message(self) -> str:
        msg = f"{self.field}: {self.reason}" if self.field else self.reason
        return f"{self.source}: {msg}" if self.source else msg

    def with_source(self, source) -> "EntryError":
        return EntryError(self.field, self.reason, source)


def show_value(v: Any) -> str:
    """A value as it appears in an error message (its JSON text where possible)."""
    try:
        return json.dumps(v, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        return repr(v)


# ----------------------------------------------------------------------------------------------------------------
# entry validation
def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Checker:
    def __init__(self, entry: dict):
        self.e = entry

    @staticmethod
    def fail(path: str, reason: str):
        raise EntryError(path, reason)

    def str_(self, obj: dict, key: str, path: str, *, nullable=False, nonempty=True):
        v = obj[key]
        if v is None and nullable:
            return None
        if not isinstance(v, str) or (nonempty and not v.strip()):
            what = "a non-empty string" + (" or null" if nullable else "")
            self.fail(path, f"expected {what}, got {show_value(v)}")
        return v

    def frac(self, v, path: str, *, nullable=False, what="a number in [0, 1]"):
        if v is None and nullable:
            return None
        if not (_is_num(v) and 0 <= v <= 1):
            self.fail(path, f"expected {what}{' or null' if nullable else ''}, got {show_value(v)}")
        return float(v)

    def int_(self, v, path: str, lo=None, hi=None, *, nullable=False):
        if v is None and nullable:
            return None
        if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f" in [{lo}, {hi}]" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None
                                                                                else "")
            self.fail(path, f"expected an integer{rng}{' or null' if nullable else ''}, got {show_value(v)}")
        return v

    def obj(self, v, path: str, fields=None):
        """``v`` must be an object; with ``fields``, holding exactly those (unknown or missing ones refused)."""
        if not isinstance(v, dict):
            self.fail(path, f"expected an object, got {show_value(v)}")
        for k in v if fields is not None else ():
            if k not in fields:
                self.fail(f"{path}.{k}", "unknown field (allowed: " + ", ".join(fields) + ")")
        for k in fields or ():
            if k not in v:
                self.fail(f"{path}.{k}", "missing")
        return v


def _check_curve_result(c: _Checker, r: dict, p: str) -> None:
    """An adversarial result's curve fields: all three, consistent with ``n_patterns`` (the trials)."""
    for k in CURVE_RESULT_FIELDS:
        if k not in r:
            raise EntryError(f"{p}.{k}", f"missing (a result with a curve needs {', '.join(CURVE_RESULT_FIELDS)})")
    if r["rate"] is not None:
        raise EntryError(f"{p}.curve", "a random bit error rate has no flip curve")
    if "n_patterns" not in r:
        raise EntryError(f"{p}.n_patterns", "missing (the number of trials of the curve)")
    n = r["n_patterns"]
    target = r["target"]
    if target is not None:
        c.obj(target, f"{p}.target")
        if set(target) != {"metric", "value"} or target["metric"] not in ("err", "asr"):
            raise EntryError(f"{p}.target", f"expected {{metric: \"err\" or \"asr\", value}}, got "
                                            f"{show_value(target)}")
        c.frac(target["value"], f"{p}.target.value")
    ftt = r["flips_to_target"]
    if not isinstance(ftt, list) or len(ftt) != n:
        raise EntryError(f"{p}.flips_to_target", f"expected a list of {n} values (one per trial)")
    for j, v in enumerate(ftt):
        c.int_(v, f"{p}.flips_to_target[{j}]", 0, nullable=True)
        if v is not None and target is None:
            raise EntryError(f"{p}.flips_to_target[{j}]", "a value without a target")
    curve = c.obj(r["curve"], f"{p}.curve")
    flips = curve.get("flips")
    if not isinstance(flips, list) or not flips or not all(_is_int(f) and f >= 1 for f in flips) \
            or any(a >= b for a, b in zip(flips, flips[1:])):
        raise EntryError(f"{p}.curve.flips", f"expected increasing flip budgets >= 1, got {show_value(flips)}")
    metrics = [k for k in curve if k != "flips"]
    if "err" not in metrics:
        raise EntryError(f"{p}.curve.err", "missing")
    for k in metrics:
        if k not in ("err", "asr"):
            raise EntryError(f"{p}.curve.{k}", "unknown field (allowed: flips, err, asr)")
        v = curve[k]
        if not isinstance(v, list) or len(v) != len(flips) or not all(isinstance(x, list) and len(x) == n for x in v):
            raise EntryError(f"{p}.curve.{k}", f"expected one list of {n} trial values per flip budget")
        for a, row in enumerate(v):
            for b, x in enumerate(row):
                c.frac(x, f"{p}.curve.{k}[{a}][{b}]")
    if target is not None and target["metric"] not in metrics:
        raise EntryError(f"{p}.curve.{target['metric']}", "missing: the target's metric")


def width_follows_suite(defense: str, defense_params: dict) -> bool:
    """True when a defense's word width is the suite's ``bits`` (the protocol's): False when its spec sets ``bits``
    itself (``rquant:bits=4``) or its ``bits`` parameter is not a width (the float formats: ``bits`` names the fields
    that may flip; the width is the format's, 32 for ``float32``, 16 for ``bfloat16``)."""
    try:
        _, kv = parse_spec(split_stages(defense)[0])
    except SpecError:
        return True
    given = defense_params.get("bits") if isinstance(defense_params, dict) else None
    return "bits" not in kv and (given is None or (isinstance(given, int) and not isinstance(given, bool)))


def validate_entry(entry: Any, suite: Suite | None = None) -> dict:
    """Check one entry (a parsed JSON object); with ``suite``, also that it follows the suite's protocol.

    Returns the entry unchanged; raises :class:`EntryError` (field path + reason) at the first problem."""
    c = _Checker(entry)
    if not isinstance(entry, dict):
        raise EntryError("", f"expected a JSON object, got {show_value(entry)[:60]}")
    for k in entry:
        if k not in ENTRY_FIELDS:
            raise EntryError(k, "unknown field (allowed: " + ", ".join(ENTRY_FIELDS) + ")")
    for k in ENTRY_FIELDS:
        if k not in entry and k not in _OPTIONAL_FIELDS:
            raise EntryError(k, "missing")
    if entry["format"] != FORMAT:
        raise EntryError("format", f"expected {show_value(FORMAT)}, got {show_value(entry['format'])}")
    reported_by = entry["reported_by"]
    if reported_by not in REPORTED_BY:
        raise EntryError("reported_by", f"expected one of {', '.join(map(show_value, REPORTED_BY))}, got "
                                        f"{show_value(reported_by)}")
    paper = reported_by == "paper"

    c.str_(entry, "suite", "suite")
    name = c.str_(entry, "name", "name")
    if not NAME_RE.fullmatch(name):
        raise EntryError("name", f"expected letters, digits, '.', '_' or '-' (a file name), got {show_value(name)}")
    c.str_(entry, "model", "model")
    c.obj(entry["model_options"], "model_options")
    c.int_(entry["n_params"], "n_params", 1, nullable=True)
    if entry["n_params"] is None and not paper:
        raise EntryError("n_params", "expected an integer >= 1 (null only for paper rows), got null")
    if "model_source" in entry and entry["model_source"] not in MODEL_SOURCES:
        raise EntryError("model_source", f"expected one of {', '.join(map(show_value, MODEL_SOURCES))}, got "
                                         f"{show_value(entry['model_source'])}")
    if "checkpoint" in entry:
        ck = c.obj(entry["checkpoint"], "checkpoint", CHECKPOINT_FIELDS)
        c.str_(ck, "path", "checkpoint.path")
        if not (isinstance(ck["sha256"], str) and _SHA256.fullmatch(ck["sha256"])):
            raise EntryError("checkpoint.sha256", f"expected 64 lowercase hex digits (SHA-256), got "
                                                  f"{show_value(ck['sha256'])}")
        if paper:
            raise EntryError("checkpoint", "rows reported by a paper were not measured here: no checkpoint")
    c.str_(entry, "defense", "defense")
    if "memory_overhead" in entry and not (_is_num(entry["memory_overhead"]) and entry["memory_overhead"] >= 0):
        raise EntryError("memory_overhead", f"expected a number >= 0 (check bits / data bits), got "
                                            f"{show_value(entry['memory_overhead'])}")
    if "defense_name" in entry:
        c.str_(entry, "defense_name", "defense_name")
    c.obj(entry["defense_params"], "defense_params")
    bits = c.int_(entry["bits"], "bits", 1, 32)

    # protocol
    proto = c.obj(entry["protocol"], "protocol", PROTOCOL_FIELDS)
    c.str_(proto, "dataset", "protocol.dataset")
    c.str_(proto, "eval_split", "protocol.eval_split", nullable=True)
    c.int_(proto["bits"], "protocol.bits", 1, 32)
    if proto["bits"] != bits and width_follows_suite(entry["defense"], entry["defense_params"]):
        raise EntryError("bits", f"{bits} differs from protocol.bits ({proto['bits']})")
    rates = proto["rates"]
    if not isinstance(rates, list):
        raise EntryError("protocol.rates", f"expected a list of rates, got {show_value(rates)}")
    for i, r in enumerate(rates):
        if not (_is_num(r) and 0 <= r <= 1):
            raise EntryError(f"protocol.rates[{i}]", f"expected a rate in [0, 1], got {show_value(r)}")
    patterns = c.int_(proto["patterns"], "protocol.patterns", 1)
    base_seed = c.int_(proto["base_seed"], "protocol.base_seed")

    if suite is not None:
        if entry["suite"] != suite.name:
            raise EntryError("suite", f"{show_value(entry['suite'])} is not the suite {show_value(suite.name)}")
        sp = suite.protocol
        if sp["eval_split"] is None:
            raise EntryError("protocol.eval_split", f"suite {show_value(suite.name)} does not pin its evaluation "
                                                    "images (eval_split = \"test[0:N]\" or n_eval in its TOML file): "
                                                    "the leaderboard ranks only results on the same images")
        for k in PROTOCOL_FIELDS:
            mine, theirs = proto[k], sp[k]
            if k == "rates":
                same = len(mine) == len(theirs) and all(same_rate(a, b) for a, b in zip(sorted(mine), theirs))
            else:
                same = mine == theirs
            if not same:
                raise EntryError(f"protocol.{k}", f"{show_value(mine)} differs from suite {show_value(suite.name)} "
                                                  f"({show_value(theirs)}): results are not comparable")

    clean = entry["clean_err"]
    if clean is None and not paper:
        raise EntryError("clean_err", "expected a number in [0, 1], got null (null only for paper rows)")
    c.frac(clean, "clean_err", nullable=paper)

    # results
    results = entry["results"]
    if not isinstance(results, list):
        raise EntryError("results", f"expected a list, got {show_value(results)}")
    if not results and not paper:
        raise EntryError("results", "empty: a benchmark entry needs a result for every rate of the suite")
    seen_rates: list[tuple[float, int]] = []
    seen_attacks: dict[str, int] = {}
    for i, r in enumerate(results):
        p = f"results[{i}]"
        c.obj(r, p)
        for k in r:
            if k not in RESULT_FIELDS:
                raise EntryError(f"{p}.{k}", "unknown field (allowed: " + ", ".join(RESULT_FIELDS) + ")")
        for k in ("attack", "rate", "rerr"):
            if k not in r:
                raise EntryError(f"{p}.{k}", "missing")
        attack = c.str_(r, "attack", f"{p}.attack")
        if attack in seen_attacks:
            raise EntryError(f"{p}.attack", f"duplicate attack {show_value(attack)} "
                                            f"(also results[{seen_attacks[attack]}])")
        seen_attacks[attack] = i
        rate = r["rate"]
        if rate is not None:
            if not (_is_num(rate) and 0 <= rate <= 1):
                raise EntryError(f"{p}.rate", f"expected a rate in [0, 1] or null, got {show_value(rate)}")
            for prev, j in seen_rates:
                if same_rate(prev, rate):
                    raise EntryError(f"{p}.rate", f"duplicate rate {show_value(rate)} (also results[{j}])")
            if not any(same_rate(rate, x) for x in rates):
                raise EntryError(f"{p}.rate", f"{show_value(rate)} is not one of the protocol's rates "
                                              f"{show_value(rates)}")
            seen_rates.append((rate, i))
        elif suite is not None and attack not in suite.attacks:
            raise EntryError(f"{p}.attack", f"{show_value(attack)} is neither a rate attack nor one of the suite's "
                                            f"attacks {show_value(list(suite.attacks))}")
        if "flips" in r:
            c.int_(r["flips"], f"{p}.flips", 0, nullable=True)
        if "n_patterns" in r:
            n = c.int_(r["n_patterns"], f"{p}.n_patterns", 1)
            if n != patterns and rate is not None:
                raise EntryError(f"{p}.n_patterns", f"{n} differs from protocol.patterns ({patterns})")
        if "config_hash" in r:
            c.str_(r, "config_hash", f"{p}.config_hash")
        if "note" in r:
            c.str_(r, "note", f"{p}.note")
        if "decode_ms" in r and not (_is_num(r["decode_ms"]) and r["decode_ms"] >= 0):
            raise EntryError(f"{p}.decode_ms", f"expected a number >= 0 (ms), got {show_value(r['decode_ms'])}")
        if "detection" in r:
            c.frac(r["detection"], f"{p}.detection", nullable=True)
        if any(k in r for k in CURVE_RESULT_FIELDS):
            _check_curve_result(c, r, p)
        rerr = r["rerr"]
        if rerr is None:
            if not paper:
                raise EntryError(f"{p}.rerr", "expected an object {mean, std, min, max}, got null "
                                              "(null only for paper rows)")
            continue
        c.obj(rerr, f"{p}.rerr")
        for k in rerr:
            if k not in ("mean", "std", "min", "max"):
                raise EntryError(f"{p}.rerr.{k}", "unknown field (allowed: mean, std, min, max)")
        for k in ("mean", "std", "min", "max"):
            if k not in rerr:
                if paper and k != "mean":
                    continue
                raise EntryError(f"{p}.rerr.{k}", "missing")
            c.frac(rerr[k], f"{p}.rerr.{k}", nullable=paper and k != "mean")
        mean, lo, hi = rerr["mean"], rerr.get("min"), rerr.get("max")
        if lo is not None and mean < lo - _TOL:
            raise EntryError(f"{p}.rerr.min", f"{show_value(lo)} is larger than the mean {show_value(mean)}")
        if hi is not None and mean > hi + _TOL:
            raise EntryError(f"{p}.rerr.max", f"{show_value(hi)} is smaller than the mean {show_value(mean)}")
        if r.get("per_pattern_rerr") is None and not paper:
            raise EntryError(f"{p}.per_pattern_rerr", "missing: a benchmark row gives every pattern's value, from "
                                                      "which its rerr is recomputed and checked")
        if r.get("per_pattern_rerr") is not None:
            pp = r["per_pattern_rerr"]
            if not isinstance(pp, list) or not pp:
                raise EntryError(f"{p}.per_pattern_rerr", f"expected a list of numbers in [0, 1], got {show_value(pp)}")
            for j, v in enumerate(pp):
                c.frac(v, f"{p}.per_pattern_rerr[{j}]")
            if rate is not None and len(pp) != patterns:
                raise EntryError(f"{p}.per_pattern_rerr", f"{len(pp)} values, expected protocol.patterns = "
                                                          f"{patterns}")
            recomputed = Summary.of(pp).to_json()
            for k in ("mean", "std", "min", "max"):
                v = rerr.get(k)
                if (v is not None or not paper) and (v is None or abs(v - recomputed[k]) > _SUMMARY_TOL):
                    raise EntryError(f"{p}.rerr.{k}", f"{show_value(v)} does not match the {k} of per_pattern_rerr "
                                                      f"({recomputed[k]!r}): the entry was edited or damaged")
    if not paper:
        missing = [x for x in rates if not any(same_rate(x, y) for y, _ in seen_rates)]
        if missing:
            raise EntryError("results", "missing rates of the suite: " + ", ".join(f"{m!r}" for m in missing)
                             + " (only paper rows may give a subset)")

    # provenance
    for k in ("version", "config_hash"):
        if entry[k] is None and not paper:
            raise EntryError(k, "expected a non-empty string, got null (null only for paper rows)")
        c.str_(entry, k, k, nullable=True)
    if "git_rev" in entry:
        c.str_(entry, "git_rev", "git_rev", nullable=True)
    seeds = c.obj(entry["seeds"], "seeds", ("train", "patterns"))
    c.int_(seeds["train"], "seeds.train", nullable=True)
    ps = seeds["patterns"]
    if ps is not None:
        if not isinstance(ps, list) or not all(_is_int(s) for s in ps):
            raise EntryError("seeds.patterns", f"expected a list of integers or null, got {show_value(ps)}")
        want = list(range(base_seed, base_seed + patterns))
        if ps != want:
            raise EntryError("seeds.patterns", f"expected base_seed .. base_seed + patterns - 1 = "
                                               f"[{want[0]}, ..., {want[-1]}], got {show_value(ps)[:80]}")
    c.str_(entry, "device", "device", nullable=True)
    date = c.str_(entry, "date", "date", nullable=True)
    if date is not None:
        try:
            datetime.fromisoformat(date.replace("Z", "+00:00"))
        except ValueError:
            raise EntryError("date", f"expected an ISO 8601 date, got {show_value(date)}") from None
    c.str_(entry, "citation", "citation", nullable=True)
    if paper and entry["citation"] is None:
        raise EntryError("citation", "required for rows reported by a paper")
    link = c.str_(entry, "link", "link", nullable=True)
    if link is not None and not re.match(r"https?://\S+$", link):
        raise EntryError("link", f"expected an http(s) URL, got {show_value(link)}")
    if "notes" in entry:
        notes = entry["notes"]
        if not isinstance(notes, list) or not all(isinstance(n, str) and n.strip() for n in notes):
            raise EntryError("notes", f"expected a list of non-empty strings, got {show_value(notes)}")
    return entry
