"""The leaderboard entry: its declared fields, its projection from result records, and its one validator.

One JSON file per leaderboard row: ``leaderboard/entries/<suite>/<name>.json``. Tables, plots and the website are a
pure function of these files (RobustBench style). An entry holds one defense on one model architecture, measured on
one or more trained models (``train_seeds``) under the suite's protocol: per result the models x patterns values of
every projected quantity (``per_model``) and their statistics (``summary``: mean over models and chips, model and
chip spreads, 95% confidence interval), recomputed and checked whenever an entry is read.

The fields are declared in :data:`ENTRY_FIELDS` and :data:`RESULT_FIELDS`; which record quantities enter an entry is
declared on the record's fields (``Field.entry``), so a new metric reaches the leaderboard with its declaration.
:func:`validate_entry` holds every rule, the protocol rules included: ``submit`` (which builds entries with
:func:`entry_from_cells`) and the leaderboard both call it. Errors are fractions in [0, 1].

Entries of format ``/1`` (bitbench 0.1-0.2: one model per entry, no statistics) are refused with a message naming
their version: submit the records again.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any

from .cells import Cell
from .energy import TOLERABLE_FIELD, check_analysis
from .metrics import field_from_declaration
from .record import BUILTIN_PATTERN_FIELDS, CURVE_METRICS, MODEL_SOURCES, RECORD_FIELDS, protection_summary
from .schema import KINDS, Field, FieldSet, FormatError, Kind, is_int, is_num, list_of, optional, \
    safe_link, show_value
from .spec import SpecError, parse_spec, split_stages
from .stats import derive_seed, summarize_cell
from .suite import Suite, same_rate

__all__ = ["FORMAT", "OLD_FORMATS", "REPORTED_BY", "PROTOCOL_FIELDS", "ENTRY_FIELDS", "RESULT_FIELDS", "NAME_RE",
           "MODEL_SOURCES", "CHECKPOINT_FIELDS", "EntryError", "validate_entry", "show_value",
           "width_follows_suite", "entry_from_cells", "result_summary", "projected_fields", "entry_pattern_fields"]

FORMAT = "bitbench.leaderboard_entry/2"
OLD_FORMATS = {"bitbench.leaderboard_entry/1": "bitbench 0.1-0.2"}
REPORTED_BY = ("benchmark", "paper")
PROTOCOL_FIELDS = ("dataset", "eval_split", "bits", "rates", "patterns", "base_seed")
CHECKPOINT_FIELDS = ("path", "sha256", "train_seed")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOL = 1e-6          # consistency of stored floats
_SUMMARY_TOL = 1e-9  # a summary recomputed from per-model values must match to rounding (an edit never does)

EntryError = FormatError  # the one format error (``[source: ]field: reason``)

_name = Kind("name", lambda v: isinstance(v, str) and bool(NAME_RE.fullmatch(v)) and len(v) <= 120,
             "letters, digits, '.', '_' or '-' (a file name, at most 120 characters)")
_link = Kind("link", lambda v: v is None or safe_link(v) is not None,
             "null or a plain http(s) URL (no spaces, quotes, parentheses, angle brackets or '|')")
_date = Kind("date", lambda v: v is None or _iso(v), "null or an ISO 8601 date")
_seeds = Kind("seeds", lambda v: isinstance(v, list) and bool(v) and all(x is None or is_int(x) for x in v),
              "a non-empty list of training seeds (integers, null for a supplied model)")
_notes = Kind("notes", lambda v: isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v),
              "a list of non-empty strings")


def _iso(v) -> bool:
    if not isinstance(v, str):
        return False
    try:
        datetime.fromisoformat(v.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


def _record(name: str) -> Field:
    return RECORD_FIELDS.get(name)


ENTRY_FIELDS = FieldSet([
    Field("format", "str", "record", f"`\"{FORMAT}\"`"),
    Field("suite", "str", "record", "suite name; equals the entry's folder and names a suite file"),
    Field("name", _name, "record", "row identifier; equals the file name stem", title="Entry"),
    Field("model", "str", "record", _record("model").doc, title="Model"),
    Field("model_options", "dict", "record", _record("model_options").doc),
    Field("n_params", optional(KINDS["posint"]), "record", _record("n_params").doc + "; null: unknown (paper rows)"),
    Field("model_source", _record("model_source").kind, "record", _record("model_source").doc, default="trained"),
    Field("checkpoints", list_of(KINDS["dict"]), "record", "the weights files the results were measured on, one per "
          "model: `{path (relative to the entry's folder), sha256, train_seed}`; `python -m benchmark run --entry "
          "FILE` re-runs the attacks on them", default=[]),
    Field("defense", "str", "record", _record("defense").doc, title="Defense"),
    Field("defense_name", "str", "record", _record("defense_name").doc),
    Field("defense_params", "dict", "record", _record("defense_params").doc),
    Field("bits", KINDS["posint"], "record", _record("bits").doc + "; equals `protocol.bits` unless the defense sets "
          "its own width", title="Bits", fmt="int"),
    Field("memory_overhead", "nonneg", "record", _record("memory_overhead").doc, default=0.0, title="Mem +%",
          fmt="pct", show="any"),
    Field("protocol", "dict", "record", "`{dataset, eval_split, bits, rates, patterns, base_seed}`: the suite's "
          "protocol (equal to it)"),
    Field("train_seeds", _seeds, "record", "training seeds of the models, in the order of every per-model list"),
    Field("clean_err", optional(KINDS["frac"]), "record", "error of the clean quantized model, mean over models (null "
          "allowed for paper rows)", title="Clean Err %", fmt="pct", lower_is_better=True),
    Field("per_model_clean_err", optional(list_of(KINDS["frac"])), "record", "the clean error of each model (null "
          "for paper rows)", default=None),
    Field("metrics", "dict", "record", "declarations of the plug-in metrics the results carry", default={}),
    Field("results", "list", "record", "one per attack (`RESULT_FIELDS`), sorted by rate, then attack"),
    Field("version", optional(KINDS["str"]), "record", "package version that produced the numbers (null: paper)"),
    Field("git_rev", optional(KINDS["text"]), "record", "git revision, if known", default=None),
    Field("config_hash", optional(KINDS["str"]), "record", "hash over the results' configuration hashes (null: "
          "paper)"),
    Field("pattern_seeds", optional(list_of(KINDS["int"])), "record", "the chips' seeds: base_seed .. base_seed + "
          "patterns - 1 (null: paper rows)"),
    Field("device", optional(KINDS["text"]), "record", "where it ran, e.g. `cpu`"),
    Field("date", _date, "record", "ISO 8601 (UTC) date of the newest result (or the paper's)"),
    Field("citation", optional(KINDS["str"]), "record", "how to cite the defense / paper (required for paper rows)"),
    Field("link", _link, "record", "URL of the paper or code"),
    Field("reported_by", Kind("by", lambda v: v in REPORTED_BY, "one of \"benchmark\", \"paper\""), "record",
          "`benchmark`: reproduced here; `paper`: copied from a paper (marked † in tables)"),
    Field("notes", _notes, "record", "remarks shown under the table", default=[]),
    TOLERABLE_FIELD,
])

RESULT_FIELDS = FieldSet([
    Field("attack", "str", "record", "canonical attack spec (`random_p0.01`, `bfa_n100`)"),
    Field("rate", optional(KINDS["frac"]), "record", "bit error rate of a random attack; one of the protocol's"),
    Field("flips", optional(KINDS["count"]), "record", "bit-flip budget of an adversarial attack", default=None),
    Field("n_patterns", optional(KINDS["posint"]), "record", "patterns (chips) or trials per model", default=None),
    Field("config_hash", optional(KINDS["str"]), "record", "hash over the models' record configuration hashes",
          default=None),
    Field("note", optional(KINDS["str"]), "record", "remark on this value (e.g. \"reported as >12%\")", default=None),
    Field("per_model", "dict", "record", "`{quantity: [[value per pattern] per model]}` for every projected "
          "pattern/trial quantity (`rerr`, `nonfinite`, plug-in metrics, `flips_to_target`); benchmark rows only",
          default={}),
    Field("summary", "dict", "record", "`{quantity: {mean, model_sd, chip_sd, ci95: [lo, hi]}}` of the numeric "
          "quantities, recomputed from `per_model` (paper rows: `{rerr: {mean}}`)"),
    Field("target", optional(KINDS["dict"]), "record", _record("target").doc, default=None),
    Field("curve", optional(KINDS["dict"]), "record", "adversarial curves: `{flips: [n, ...], err: [[[value per "
          "flip budget] per trial] per model], asr: ...}`", default=None),
    Field("decode_ms", optional(KINDS["nonneg"]), "record", _record("decode_ms").doc + ", mean over models",
          default=None, title="Decode ms", fmt="ms", show="any"),
    Field("detection", optional(KINDS["frac"]), "record", "checksum stages: share of the flipped data bits inside "
          "flagged groups, over all patterns and models", default=None, title="Detected %", fmt="pct1", show="any"),
])
_SUMMARY_KEYS = ("mean", "model_sd", "chip_sd", "ci95")


def projected_fields(metrics: dict | None = None) -> list[Field]:
    """The record quantities an entry result carries per model (``Field.entry == "result"`` at the pattern/trial
    level), then the plug-in metrics declared in ``metrics``."""
    out = [f for f in RECORD_FIELDS if f.entry == "result" and f.level in ("pattern", "trial") and f.name != "curve"]
    return out + [field_from_declaration(n, d) for n, d in (metrics or {}).items()]


def entry_pattern_fields(entry: dict) -> list[Field]:
    return projected_fields(entry.get("metrics"))


def width_follows_suite(defense: str, defense_params: dict) -> bool:
    """True when a defense's word width is the suite's ``bits`` (the protocol's): False when its spec sets ``bits``
    itself (``rquant:bits=4``) or its ``bits`` parameter is not a width (the float formats: ``bits`` names the fields
    that may flip; the width is the format's, 32 for ``float32``, 16 for ``bfloat16``)."""
    try:
        _, kv = parse_spec(split_stages(defense)[0])
    except SpecError:
        return True
    given = defense_params.get("bits") if isinstance(defense_params, dict) else None
    return "bits" not in kv and (given is None or is_int(given))


# ---------------------------------------------------------------------------------------------------------------------
# statistics of a result
def result_summary(per_model: list, identity: str) -> dict:
    """``{mean, model_sd, chip_sd, ci95}`` of a models x patterns matrix (seeded by ``identity``)."""
    s = summarize_cell(per_model, seed=derive_seed(identity))
    return {"mean": s.mean, "model_sd": s.model_sd, "chip_sd": s.chip_sd, "ci95": list(s.ci95)}


def _summary_identity(entry: dict, r: dict, name: str) -> str:
    return f"{entry.get('suite')}|{entry.get('name')}|{r.get('attack')}|{name}"


# ---------------------------------------------------------------------------------------------------------------------
# records -> entry
def _combined_hash(items) -> str:
    return hashlib.sha256(json.dumps(sorted(items)).encode()).hexdigest()[:16]


def result_from_cell(cell: Cell) -> dict:
    """One entry result from a cell (the projection declared on the record's fields)."""
    r0 = cell.first
    res: dict = {"attack": r0.attack, "rate": r0.rate}
    if r0.flips is not None:
        res["flips"] = r0.flips
    res["n_patterns"] = cell.n_patterns
    res["config_hash"] = _combined_hash([r.config_hash for r in cell.records])
    res["per_model"] = {}
    for f in projected_fields(r0.metrics):
        if f.level == "trial" and not cell.has_curve:
            continue
        if f.name == "flips_to_target" and r0.target is None:
            continue
        res["per_model"][f.name] = cell.matrix(f.name)
    if cell.has_curve:
        res["target"] = r0.target
        curve = {"flips": [pt["flips"] for pt in r0.patterns[0].curve]}
        for key in CURVE_METRICS:
            if all(key in pt for r in cell.records for p in r.patterns for pt in p.curve):
                curve[key] = [[[pt[key] for pt in p.curve] for p in r.patterns] for r in cell.records]
        res["curve"] = curve
    if r0.protection is not None:
        res["decode_ms"] = sum(cell.model_values("decode_ms")) / cell.n_models
        det = [v for r in cell.records for k, v in (protection_summary(r) or {}).items() if k.endswith(".detection")]
        if det:
            flips = [sum(p.protection.get("flips", 0) for p in r.patterns) for r in cell.records]
            tot = sum(flips)
            res["detection"] = None if any(d is None for d in det) or not tot else \
                sum(d * f for d, f in zip(det, flips)) / tot
    return res


def _same(cells, key: str, *, approx: bool = False):
    first = getattr(cells[0].first, key)
    for c in cells[1:]:
        v = getattr(c.first, key)
        if (abs(v - first) > 1e-6) if approx else (v != first):
            raise EntryError(key, f"{show_value(v)} ({c.attack}) differs from {show_value(first)} ({cells[0].attack}): "
                                  "one entry holds records of the same suite, model and defense")
    return first


def entry_from_cells(cells: list, suite: Suite, *, name: str | None = None, citation: str | None = None,
                     link: str | None = None, checkpoints: list | None = None, tolerable: list | None = None) -> dict:
    """Build (and validate against ``suite``) one entry from cells of the same suite, model and defense, each over
    the same trained models; ``tolerable``: tolerable-rate analyses of the same models (``bitbench.tolerable/1``
    objects, :mod:`.energy`), carried as the entry's ``tolerable``."""
    if not cells:
        raise EntryError("results", "no result records given")
    for key in ("suite", "dataset", "eval_split", "model", "model_options", "defense", "defense_params", "bits",
                "n_params", "model_source", "metrics"):
        _same(cells, key)
    seeds = cells[0].train_seeds
    for c in cells[1:]:
        if c.train_seeds != seeds:
            raise EntryError("train_seed", f"the records of {c.attack} are of models {c.train_seeds}, those of "
                                           f"{cells[0].attack} of {seeds}: give every attack's records of the same "
                                           "models")
    for i, key in enumerate(("weights_sha256", "clean_err")):
        for c in cells[1:]:
            for a, b, s in zip(cells[0].model_values(key), c.model_values(key), seeds):
                if (abs(a - b) > 1e-9) if key == "clean_err" else (a != b):
                    raise EntryError(key, f"model {s}: {show_value(b)} under {c.attack} differs from {show_value(a)} "
                                          f"under {cells[0].attack}: not the same trained model")
    r0 = cells[0].first
    if r0.suite != suite.name:
        raise EntryError("suite", f"the records are of suite {show_value(r0.suite)}, the suite file "
                                  f"{suite.path or ''} is {show_value(suite.name)}")
    results = [result_from_cell(c) for c in cells]
    results.sort(key=lambda r: (r["rate"] is None, r["rate"] or 0.0, r["attack"]))
    records = [r for c in cells for r in c.records]
    uniq = lambda key: "; ".join(sorted({str(getattr(r, key)) for r in records if getattr(r, key) is not None})) \
        or None  # noqa: E731
    per_model_clean = cells[0].model_values("clean_err")
    entry = {
        "format": FORMAT, "suite": suite.name,
        "name": name or default_entry_name(r0.model, r0.defense),
        "model": r0.model, "model_options": r0.model_options, "n_params": r0.n_params,
        "model_source": r0.model_source,
        "checkpoints": list(checkpoints or []),
        "defense": r0.defense, "defense_name": r0.defense_name or r0.defense.split(":", 1)[0],
        "defense_params": r0.defense_params, "bits": r0.bits,
        "memory_overhead": _same(cells, "memory_overhead", approx=True),
        "protocol": {**suite.protocol, "dataset": r0.dataset, "eval_split": r0.eval_split},
        "train_seeds": seeds,
        "clean_err": sum(per_model_clean) / len(per_model_clean),
        "per_model_clean_err": per_model_clean,
        "metrics": r0.metrics,
        "results": results,
        "version": uniq("version"), "git_rev": uniq("git_rev"),
        "config_hash": _combined_hash([(r["attack"], r["config_hash"]) for r in results]),
        "pattern_seeds": next((c.first.seeds for c in cells if c.rate is not None), None),
        "device": uniq("device"), "date": max(r.date for r in records),
        "citation": citation, "link": link, "reported_by": "benchmark", "notes": [],
    }
    if tolerable:
        entry["tolerable"] = sorted(tolerable, key=lambda a: (a["budget"], a["reference"], a["spec"]))
    for res in results:
        res["summary"] = {f.name: result_summary(res["per_model"][f.name], _summary_identity(entry, res, f.name))
                          for f in projected_fields(entry["metrics"]) if f.summary and f.name in res["per_model"]}
    entry = {f.name: entry[f.name] for f in ENTRY_FIELDS if f.name in entry}
    validate_entry(entry, suite)
    return entry


def default_entry_name(model: str, defense: str) -> str:
    """A file-safe row name: ``lenet`` + ``randbet:p=0.05`` -> ``lenet-randbet-p0.05``."""
    s = f"{model}-{defense}".replace("=", "")
    return (re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-._") or "entry")[:120]


# ---------------------------------------------------------------------------------------------------------------------
# validation
def _fields(obj: dict, fields: FieldSet, path: str) -> None:
    for k in obj:
        if fields.get(k) is None:
            raise EntryError(f"{path}{k}", "unknown field (allowed: " + ", ".join(fields.names()) + ")")
    for f in fields:
        if f.name not in obj:
            if f.required:
                raise EntryError(f"{path}{f.name}", "missing")
            continue
        f.check(obj[f.name], f"{path}{f.name}")


def validate_entry(entry: Any, suite: Suite | None = None) -> dict:
    """Check one entry (a parsed JSON object); with ``suite``, also that it follows the suite's protocol.

    Returns the entry unchanged; raises :class:`EntryError` (field path + reason) at the first problem."""
    if not isinstance(entry, dict):
        raise EntryError("", f"expected a JSON object, got {show_value(entry)[:60]}")
    fmt = entry.get("format")
    if isinstance(fmt, str) and fmt in OLD_FORMATS:
        raise EntryError("format", f"{json.dumps(fmt)} is an entry of {OLD_FORMATS[fmt]}; this version reads "
                                   f"{json.dumps(FORMAT)} (submit the result records again: python -m benchmark "
                                   "submit <records>)")
    if fmt != FORMAT:
        raise EntryError("format", f"expected {json.dumps(FORMAT)}, got {show_value(fmt)}")
    _fields(entry, ENTRY_FIELDS, "")
    paper = entry["reported_by"] == "paper"
    seeds = entry["train_seeds"]
    n_models = len(seeds)
    for i, ck in enumerate(entry.get("checkpoints", [])):
        if set(ck) != set(CHECKPOINT_FIELDS):
            raise EntryError(f"checkpoints[{i}]", f"expected {{{', '.join(CHECKPOINT_FIELDS)}}}, got {show_value(ck)}")
        if not KINDS["str"].check(ck["path"]):
            _bad(f"checkpoints[{i}].path", "a relative path", ck["path"])
        if ck["path"].startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", ck["path"]) or "\0" in ck["path"]:
            raise EntryError(f"checkpoints[{i}].path", f"expected a path relative to the entry's folder, got "
                                                       f"{show_value(ck['path'])}")
        if not KINDS["sha256"].check(ck["sha256"]):
            _bad(f"checkpoints[{i}].sha256", KINDS["sha256"].want, ck["sha256"])
        if ck["train_seed"] not in seeds:
            raise EntryError(f"checkpoints[{i}].train_seed", f"{show_value(ck['train_seed'])} is not one of the "
                                                             f"entry's train_seeds {show_value(seeds)}")
    if paper and entry.get("checkpoints"):
        raise EntryError("checkpoints", "rows reported by a paper were not measured here: no checkpoint")
    if len(set(map(json.dumps, seeds))) != n_models:
        raise EntryError("train_seeds", f"duplicate seeds in {show_value(seeds)}")
    if entry["n_params"] is None and not paper:
        raise EntryError("n_params", "expected an integer >= 1 (null only for paper rows), got null")
    proto = entry["protocol"]
    if set(proto) != set(PROTOCOL_FIELDS):
        raise EntryError("protocol", f"expected {{{', '.join(PROTOCOL_FIELDS)}}}, got {show_value(proto)}")
    for k, kind in (("dataset", KINDS["str"]), ("eval_split", optional(KINDS["str"])), ("bits", KINDS["posint"]),
                    ("rates", list_of(KINDS["frac"])), ("patterns", KINDS["posint"]), ("base_seed", KINDS["count"])):
        if not kind.check(proto[k]):
            raise EntryError(f"protocol.{k}", f"expected {kind.want}, got {show_value(proto[k])}")
    if proto["bits"] != entry["bits"] and width_follows_suite(entry["defense"], entry["defense_params"]):
        raise EntryError("bits", f"{entry['bits']} differs from protocol.bits ({proto['bits']})")
    plug = {n: field_from_declaration(n, d) for n, d in entry.get("metrics", {}).items()}
    if set(plug) & set(BUILTIN_PATTERN_FIELDS):
        raise EntryError("metrics", "a plug-in metric cannot take the name of a built-in field")
    clean = entry["clean_err"]
    pmc = entry.get("per_model_clean_err")
    for k in ("version", "config_hash", "clean_err", "pattern_seeds", "per_model_clean_err"):
        if entry.get(k) is None and not paper:
            raise EntryError(k, "null (null only for paper rows)")
    if pmc is not None:
        if len(pmc) != n_models:
            raise EntryError("per_model_clean_err", f"{len(pmc)} values for {n_models} models (train_seeds)")
        if clean is None or abs(sum(pmc) / n_models - clean) > _SUMMARY_TOL:
            raise EntryError("clean_err", f"{show_value(clean)} is not the mean of per_model_clean_err: the entry was "
                                          "edited or damaged")
    if paper and entry["citation"] is None:
        raise EntryError("citation", "required for rows reported by a paper")
    # results
    results = entry["results"]
    if not results and not paper:
        raise EntryError("results", "empty: a benchmark entry needs a result for every rate of the suite")
    for i, r in enumerate(results):
        _check_result(entry, r, f"results[{i}]", plug, n_models, pmc, paper)
    if suite is not None:
        check_protocol(entry, suite)
    else:
        _check_rates(entry, proto["rates"], None)
    ps = entry.get("pattern_seeds")
    if ps is not None and ps != list(range(proto["base_seed"], proto["base_seed"] + proto["patterns"])):
        raise EntryError("pattern_seeds", f"expected base_seed .. base_seed + patterns - 1, got {show_value(ps)[:80]}")
    _check_tolerable(entry)
    return entry


def _check_tolerable(entry: dict) -> None:
    """Each analysis: valid and recomputed (:func:`.energy.check_analysis`), of this entry's suite, model, defense,
    models and chips; its RErr at a rate the entry reports equals the entry's; its own reference is the models'
    clean errors."""
    seen = set()
    for i, a in enumerate(entry.get("tolerable") or []):
        w = f"tolerable[{i}]"
        check_analysis(a, w)
        if entry["reported_by"] == "paper":
            raise EntryError(w, "rows reported by a paper were not measured here: no tolerable-rate analysis")
        for k in ("suite", "model", "defense", "bits", "train_seeds", "pattern_seeds"):
            if a[k] != entry.get(k):
                raise EntryError(f"{w}.{k}", f"{show_value(a[k])[:80]} differs from the entry's "
                                             f"{show_value(entry.get(k))[:80]}: an analysis of other models or chips")
        key = (a["budget"], a["reference"], a["spec"])
        if key in seen:
            raise EntryError(w, f"a second analysis {a['spec']!r} with the same budget and reference")
        seen.add(key)
        pmc = entry.get("per_model_clean_err")
        if a["reference"] == "own" and pmc is not None and any(
                abs(x - y) > _SUMMARY_TOL for x, y in zip(a["reference_per_model"], pmc)):
            raise EntryError(f"{w}.reference_per_model", "differs from the entry's per_model_clean_err")
        for r in entry["results"]:
            if r.get("rate") is None or "rerr" not in r.get("per_model", {}):
                continue
            for p, mat in zip(a["rates"], a["per_model_rerr"]):
                if same_rate(p, r["rate"]) and mat != r["per_model"]["rerr"]:
                    raise EntryError(f"{w}.per_model_rerr", f"at p = {p!r} differs from the entry's result "
                                                            f"{r['attack']}: not the same evaluation")


def _bad(path: str, want: str, v):
    raise EntryError(path, f"expected {want}, got {show_value(v)}")


def _check_result(entry: dict, r: Any, p: str, plug: dict, n_models: int, pmc, paper: bool) -> None:
    if not isinstance(r, dict):
        raise EntryError(p, f"expected an object, got {show_value(r)}")
    _fields(r, RESULT_FIELDS, f"{p}.")
    n = r.get("n_patterns")
    fields = {f.name: f for f in projected_fields(entry.get("metrics"))}
    pm = r.get("per_model", {})
    if paper and pm:
        raise EntryError(f"{p}.per_model", "paper rows give no per-model values (they were not measured here)")
    if not paper and "rerr" not in pm:
        raise EntryError(f"{p}.per_model.rerr", "missing: a benchmark row gives every model's per-pattern values, "
                                               "from which its summary is recomputed and checked")
    for name, mat in pm.items():
        f = fields.get(name)
        w = f"{p}.per_model.{name}"
        if f is None:
            raise EntryError(w, "unknown quantity (allowed: " + ", ".join(fields) + ")")
        if not isinstance(mat, list) or len(mat) != n_models:
            raise EntryError(w, f"expected one list per model ({n_models}, the train_seeds)")
        for m, row in enumerate(mat):
            if not isinstance(row, list) or n is None or len(row) != n:
                raise EntryError(f"{w}[{m}]", f"expected one value per pattern (n_patterns = {show_value(n)})")
            for c, v in enumerate(row):
                f.check(v, f"{w}[{m}][{c}]")
    if "rerr" in pm and pmc is not None:
        for m, row in enumerate(pm["rerr"]):
            for c, v in enumerate(row):
                if v < pmc[m] - _TOL:
                    raise EntryError(f"{p}.per_model.rerr[{m}][{c}]", f"{show_value(v)} is below the model's clean "
                                                                     f"error {show_value(pmc[m])}: RErr counts clean "
                                                                     "OR perturbed mistakes, so it is never lower")
    summ = r["summary"]
    for name, s in summ.items():
        w = f"{p}.summary.{name}"
        f = fields.get(name)
        if f is None or not f.summary:
            raise EntryError(w, "unknown quantity (summaries: " + ", ".join(k for k, x in fields.items() if x.summary)
                             + ")")
        if not isinstance(s, dict):
            raise EntryError(w, f"expected an object {{{', '.join(_SUMMARY_KEYS)}}}, got {show_value(s)}")
        if paper and name in pm:
            raise EntryError(w, "paper rows give no per-model values")
        if name not in pm:
            if not paper:
                raise EntryError(w, f"without {p}.per_model.{name} (a benchmark row's summaries are recomputed from "
                                    "its per-model values)")
            if set(s) - set(_SUMMARY_KEYS) or "mean" not in s:
                raise EntryError(w, f"expected {{mean[, ci95]}}, got {show_value(s)}")
            f.check(s["mean"], f"{w}.mean")
            continue
        want = result_summary(pm[name], _summary_identity(entry, r, name))
        if set(s) != set(want):
            raise EntryError(w, f"expected {{{', '.join(_SUMMARY_KEYS)}}}, got {show_value(s)}")
        for k, v in want.items():
            if k == "ci95":   # a bootstrap interval: tables recompute it from the per-model values
                continue
            got = s[k]
            same = (got is None and v is None) or (
                isinstance(got, list) and isinstance(v, list) and len(got) == len(v)
                and all(is_num(a) and abs(a - b) <= _SUMMARY_TOL for a, b in zip(got, v))) or (
                is_num(got) and v is not None and not isinstance(v, list) and abs(got - v) <= _SUMMARY_TOL)
            if not same:
                raise EntryError(f"{w}.{k}", f"{show_value(got)} does not match the per-model values "
                                             f"({show_value(v)}): the entry was edited or damaged")
        ci = s["ci95"]
        if not (isinstance(ci, list) and len(ci) == 2 and all(is_num(x) for x in ci)
                and ci[0] - _SUMMARY_TOL <= want["mean"] <= ci[1] + _SUMMARY_TOL):
            raise EntryError(f"{w}.ci95", f"expected [low, high] around the mean {want['mean']!r}, got "
                                          f"{show_value(ci)}")
    if not paper:
        for name in pm:
            if fields[name].summary and name not in summ:
                raise EntryError(f"{p}.summary.{name}", "missing")
    elif "rerr" not in summ and r.get("note") is None:
        raise EntryError(f"{p}.summary.rerr", "missing (a paper row without the value gives a note)")
    # curves
    curve, target = r.get("curve"), r.get("target")
    if curve is not None or target is not None or "flips_to_target" in pm:
        if r["rate"] is not None:
            raise EntryError(f"{p}.curve", "a random bit error rate has no flip curve")
        if curve is None:
            raise EntryError(f"{p}.curve", "missing (a result with a target has a curve)")
        _check_curve(curve, target, pm, n_models, n, p)


def _check_curve(curve, target, pm, n_models, n, p) -> None:
    if target is not None and not (isinstance(target, dict) and set(target) == {"metric", "value"}
                                   and target["metric"] in CURVE_METRICS and KINDS["frac"].check(target["value"])):
        raise EntryError(f"{p}.target", f"expected null or {{metric: one of {list(CURVE_METRICS)}, value}}, got "
                                        f"{show_value(target)}")
    if target is not None and "flips_to_target" not in pm:
        raise EntryError(f"{p}.per_model.flips_to_target", "missing (a result with a target)")
    if target is None and "flips_to_target" in pm:
        raise EntryError(f"{p}.per_model.flips_to_target", "values without a target")
    flips = curve.get("flips")
    if not isinstance(flips, list) or not flips or not all(is_int(f) and f >= 1 for f in flips) \
            or any(a >= b for a, b in zip(flips, flips[1:])):
        raise EntryError(f"{p}.curve.flips", f"expected increasing flip budgets >= 1, got {show_value(flips)}")
    if "err" not in curve:
        raise EntryError(f"{p}.curve.err", "missing")
    for k, v in curve.items():
        if k == "flips":
            continue
        if k not in CURVE_METRICS:
            raise EntryError(f"{p}.curve.{k}", f"unknown field (allowed: flips, {', '.join(CURVE_METRICS)})")
        ok = isinstance(v, list) and len(v) == n_models and all(
            isinstance(m, list) and len(m) == n and all(
                isinstance(t, list) and len(t) == len(flips) and all(KINDS["frac"].check(x) for x in t) for t in m)
            for m in v)
        if not ok:
            raise EntryError(f"{p}.curve.{k}", f"expected [[[a fraction per flip budget ({len(flips)})] per trial "
                                               f"({n})] per model ({n_models})]")
    if target is not None and target["metric"] not in curve:
        raise EntryError(f"{p}.curve.{target['metric']}", "missing: the target's metric")


def _check_rates(entry: dict, rates: list, suite: Suite | None) -> None:
    """Rates unique and the protocol's; attacks unique and the suite's; a benchmark row covers every rate."""
    paper = entry["reported_by"] == "paper"
    seen_rates: list = []
    seen_attacks: dict = {}
    for i, r in enumerate(entry["results"]):
        p = f"results[{i}]"
        if r["attack"] in seen_attacks:
            raise EntryError(f"{p}.attack", f"duplicate attack {show_value(r['attack'])} (also "
                                            f"results[{seen_attacks[r['attack']]}])")
        seen_attacks[r["attack"]] = i
        rate = r["rate"]
        if rate is not None:
            for prev, j in seen_rates:
                if same_rate(prev, rate):
                    raise EntryError(f"{p}.rate", f"duplicate rate {show_value(rate)} (also results[{j}])")
            if not any(same_rate(rate, x) for x in rates):
                raise EntryError(f"{p}.rate", f"{show_value(rate)} is not one of the protocol's rates {show_value(rates)}")
            if not paper and r.get("n_patterns") != entry["protocol"]["patterns"]:
                raise EntryError(f"{p}.n_patterns", f"{show_value(r.get('n_patterns'))} differs from protocol.patterns "
                                                    f"({entry['protocol']['patterns']})")
            seen_rates.append((rate, i))
        elif suite is not None and r["attack"] not in suite.attacks:
            raise EntryError(f"{p}.attack", f"{show_value(r['attack'])} is neither a rate attack nor one of the "
                                            f"suite's attacks {show_value(list(suite.attacks))}")
    if not paper:
        missing = [x for x in rates if not any(same_rate(x, y) for y, _ in seen_rates)]
        if missing:
            raise EntryError("results", "missing rates of the suite: " + ", ".join(f"{m!r}" for m in missing)
                             + " (give one result per rate; only paper rows may give a subset)")


def check_protocol(entry: dict, suite: Suite) -> None:
    """The entry measured under ``suite``'s protocol (the one place where these rules are written)."""
    if entry["suite"] != suite.name:
        raise EntryError("suite", f"{show_value(entry['suite'])} is not the suite {show_value(suite.name)}")
    sp = suite.protocol
    if sp["eval_split"] is None:
        raise EntryError("protocol.eval_split", f"suite {show_value(suite.name)} does not pin its evaluation images "
                                                "(eval_split = \"test[0:N]\" or n_eval in its TOML file): the "
                                                "leaderboard ranks only results on the same images")
    proto = entry["protocol"]
    for k in PROTOCOL_FIELDS:
        mine, theirs = proto[k], sp[k]
        same = (len(mine) == len(theirs) and all(same_rate(a, b) for a, b in zip(sorted(mine), theirs))) \
            if k == "rates" else mine == theirs
        if not same:
            raise EntryError(f"protocol.{k}", f"{show_value(mine)} differs from suite {show_value(suite.name)} "
                                              f"({show_value(theirs)}): results are not comparable")
    _check_rates(entry, list(sp["rates"]), suite)
