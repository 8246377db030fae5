"""Reading entries, turning harness result records into an entry (`submit`), and writing entries atomically.

The entry files themselves live in the data folder ``leaderboard/entries/<suite>/<name>.json`` (next to this
module; a folder without ``__init__.py``, so it does not shadow this module).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable

from bitbench.configs.entry import (ENTRY_FIELDS, FORMAT, NAME_RE, EntryError, show_value, validate_entry,
                                    width_follows_suite)
from bitbench.configs.fileio import atomic_write_text, sha256_file
from bitbench.configs.record import RecordError, ResultRecord, protection_summary
from bitbench.configs.suite import Suite, SuiteError, load_suite, same_rate

__all__ = ["DEFAULT_ENTRIES_DIR", "load_entry", "load_entries", "load_record", "entry_from_records", "submit",
           "write_entry", "dumps_entry", "entry_files", "default_entry_name"]

DEFAULT_ENTRIES_DIR = Path(__file__).resolve().parent / "entries"


# ----------------------------------------------------------------------------------------------------------------
# JSON output: stable, readable (lists of scalars on one line), trailing newline
def _dump(v, indent: int) -> str:
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(v, dict):
        if not v:
            return "{}"
        if all(not isinstance(x, (dict, list)) for x in v.values()):
            flat = json.dumps(v, ensure_ascii=False, allow_nan=False)
            if len(flat) + indent <= 100:
                return flat
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_dump(x, indent + 2)}" for k, x in v.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(v, list):
        if not v:
            return "[]"
        if all(not isinstance(x, (dict, list)) for x in v):
            return "[" + ", ".join(json.dumps(x, ensure_ascii=False, allow_nan=False) for x in v) + "]"
        return "[\n" + ",\n".join(inner + _dump(x, indent + 2) for x in v) + "\n" + pad + "]"
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


def dumps_entry(entry: dict) -> str:
    return _dump(entry, 0) + "\n"


def write_entry(entry: dict, path: str | os.PathLike) -> Path:
    """Write an entry atomically (temporary file in the same folder + ``os.replace``)."""
    path = Path(path)
    atomic_write_text(path, dumps_entry(entry))
    return path


# ----------------------------------------------------------------------------------------------------------------
# reading entries
def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise EntryError("", f"not valid JSON: {e}", path) from None
    except OSError as e:
        raise EntryError("", f"cannot read: {e.strerror or e}", path) from None


def load_entry(path: str | os.PathLike, suite: Suite | None = None, *, configs_dir=None) -> dict:
    """Read and validate one entry file; its folder must be its suite and its file name its ``name``.

    Without ``suite`` the suite file is looked up by the entry's ``suite`` (unknown suite: refused)."""
    path = Path(path)
    entry = _read_json(path)
    try:
        if isinstance(entry, dict):
            if isinstance(entry.get("name"), str) and entry["name"] != path.stem:
                raise EntryError("name", f"{show_value(entry['name'])} does not match the file name {path.name!r}")
            if isinstance(entry.get("suite"), str) and entry["suite"] != path.parent.name:
                raise EntryError("suite", f"{show_value(entry['suite'])} does not match the folder "
                                          f"{path.parent.name!r}")
        validate_entry(entry)  # shape first: clear messages before the suite is looked up
        if suite is None:
            try:
                suite = load_suite(entry["suite"], configs_dir)
            except SuiteError as e:
                raise EntryError("suite", str(e)) from None
        validate_entry(entry, suite)
    except EntryError as e:
        raise e.with_source(path) from None
    return entry


def entry_files(entries_dir: str | os.PathLike | None = None, suites: Iterable[str] | None = None) -> dict:
    """``{suite: [paths]}``, everything sorted (independent of the order the file system lists them)."""
    root = Path(entries_dir) if entries_dir is not None else DEFAULT_ENTRIES_DIR
    out: dict[str, list[Path]] = {}
    if root.is_dir():
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            files = sorted((p for p in d.glob("*.json") if not p.name.startswith(".")), key=lambda p: p.name)
            if files:
                out[d.name] = files
    if suites is not None:
        wanted = list(dict.fromkeys(suites))
        out = {s: out.get(s, []) for s in sorted(wanted)}
    return out


def load_entries(entries_dir=None, suites: Iterable[str] | None = None, *, configs_dir=None) -> dict:
    """``{suite_name: (Suite, [entry, ...])}`` for every suite folder (or the given ``suites``), validated.

    Entries are sorted by name. A folder that does not exist or holds no entry at all is an error (a typo must
    not produce an empty leaderboard)."""
    root = Path(entries_dir) if entries_dir is not None else DEFAULT_ENTRIES_DIR
    if not root.is_dir():
        raise EntryError("", "the entries folder does not exist" if not root.exists() else "not a folder", root)
    found = entry_files(root)
    if not found:
        raise EntryError("", "the entries folder holds no entries (expected <suite>/<name>.json files)", root)
    out = {}
    for sname, files in (entry_files(root, suites) if suites is not None else found).items():
        try:
            suite = load_suite(sname, configs_dir)
        except SuiteError as e:
            where = files[0].parent if files else Path(entries_dir or DEFAULT_ENTRIES_DIR) / sname
            raise EntryError("suite", str(e), where) from None
        entries = [load_entry(p, suite) for p in files]
        entries.sort(key=lambda e: e["name"])
        out[sname] = (suite, entries)
    return out


# ----------------------------------------------------------------------------------------------------------------
# result records -> entry
def load_record(path: str | os.PathLike) -> ResultRecord:
    """Read and validate a harness result record (the one record format, :class:`ResultRecord`)."""
    path = Path(path)
    data = _read_json(path)
    try:
        return ResultRecord.from_json(data, source=path)
    except RecordError as e:
        raise EntryError(e.field, e.reason, path) from None


def curve_result(rec: dict) -> dict:
    """An adversarial record's curve as an entry result's fields: target, flips_to_target, and per flip budget the
    trials' evaluation metrics (``err``, and ``asr`` where the attack records it)."""
    curves = rec["curve"]
    flips = [q["flips"] for q in curves[0]] if curves else []
    out = {"target": rec["target"], "flips_to_target": rec["flips_to_target"], "curve": {"flips": flips}}
    for key in ("err", "asr"):
        if curves and all(key in q for c in curves for q in c):
            out["curve"][key] = [[c[i][key] for c in curves] for i in range(len(flips))]
    return out


def protection_result(rec: ResultRecord) -> dict:
    """The protection fields of an entry's result from a protected record: ``decode_ms`` and, for checksum
    stages, ``detection`` (flipped data bits inside flagged groups / flipped data bits, over all patterns)."""
    out = {"decode_ms": rec.decode_ms}
    det = [v for k, v in (protection_summary(rec) or {}).items() if k.endswith(".detection")]
    if det:
        out["detection"] = det[0]
    return out


def default_entry_name(model: str, defense: str) -> str:
    """A file-safe row name: ``lenet`` + ``randbet:p=0.05`` -> ``lenet-randbet-p0.05``."""
    s = f"{model}-{defense}".replace("=", "")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-._") or "entry"


def _same_everywhere(recs, paths, key, *, approx=False):
    first = recs[0][key]
    for r, p in zip(recs[1:], paths[1:]):
        v = r[key]
        same = abs(v - first) <= 1e-6 if approx else v == first
        if not same:
            raise EntryError(key, f"{show_value(v)} in {p} differs from {show_value(first)} in {paths[0]}: one entry "
                                  "needs records of the same suite, model and defense")
    return first


def entry_from_records(records: list[ResultRecord], suite: Suite, *, paths: list | None = None,
                       name: str | None = None, citation: str | None = None, link: str | None = None) -> dict:
    """Build (and validate against ``suite``) one entry from result records of the same suite/model/defense."""
    if not records:
        raise EntryError("results", "no result records given")
    objs = list(records)
    records = [r.to_json() for r in records]  # the validated file view of each record
    paths = [str(p) for p in (paths or [f"record {i}" for i in range(len(records))])]
    for key in ("suite", "dataset", "eval_split", "model", "model_options", "defense", "bits", "n_params"):
        _same_everywhere(records, paths, key)
    for key in ("defense_name", "defense_params", "train_seed", "model_source", "weights_sha256"):
        if all(key in r for r in records):
            _same_everywhere(records, paths, key)
    clean = _same_everywhere(records, paths, "clean_err", approx=True)
    r0 = records[0]
    if r0["suite"] != suite.name:
        raise EntryError("suite", f"the records are of suite {show_value(r0['suite'])}, the suite file "
                                  f"{suite.path or ''} is {show_value(suite.name)}")

    # protocol of the records, checked against the suite's
    checks = [("dataset", r0["dataset"], suite.dataset)]
    if width_follows_suite(r0["defense"], r0.get("defense_params", {})):
        checks.append(("bits", r0["bits"], suite.bits))  # else the defense sets its own width (rquant:bits=4, bfloat16)
    for key, mine, theirs in checks:
        if mine != theirs:
            raise EntryError(key, f"{show_value(mine)} in {paths[0]} differs from suite {show_value(suite.name)} "
                                  f"({show_value(theirs)}): results are not comparable")
    if suite.eval_split is not None and r0["eval_split"] != suite.eval_split:
        raise EntryError("eval_split", f"{show_value(r0['eval_split'])} in {paths[0]} differs from suite "
                                       f"{show_value(suite.name)} ({show_value(suite.eval_split)}): results are not "
                                       "comparable")
    results, pattern_seeds, by_rate = [], None, {}
    for rec, obj, p in zip(records, objs, paths):
        rate = rec.get("rate")
        if rate is not None:
            if rec["n_patterns"] != suite.patterns:
                raise EntryError("n_patterns", f"{rec['n_patterns']} in {p} differs from suite "
                                               f"{show_value(suite.name)} patterns ({suite.patterns})")
            seeds = rec.get("seeds")
            if seeds is not None:
                want = list(range(suite.base_seed, suite.base_seed + suite.patterns))
                if seeds != want:
                    raise EntryError("seeds", f"{show_value(seeds)[:60]} in {p} are not the suite's pattern seeds "
                                              f"base_seed={suite.base_seed} .. {want[-1]}")
                pattern_seeds = want
            for prev, q in by_rate.items():
                if same_rate(prev, rate):
                    raise EntryError("rate", f"duplicate rate {show_value(rate)}: {q} and {p}")
            if not any(same_rate(rate, x) for x in suite.rates):
                raise EntryError("rate", f"{show_value(rate)} in {p} is not one of the rates of suite "
                                         f"{show_value(suite.name)} {show_value(list(suite.rates))}")
            by_rate[rate] = p
        else:
            if rec["attack"] not in suite.attacks:
                raise EntryError("attack", f"{show_value(rec['attack'])} in {p} is neither a random bit error rate nor "
                                           f"one of the attacks of suite {show_value(suite.name)} "
                                           f"{show_value(list(suite.attacks))}")
        res = {"attack": rec["attack"], "rate": rate}
        if rec.get("flips") is not None:
            res["flips"] = rec["flips"]
        res["rerr"] = {k: rec["rerr"][k] for k in ("mean", "std", "min", "max")}
        if isinstance(rec.get("per_pattern_rerr"), list):
            res["per_pattern_rerr"] = rec["per_pattern_rerr"]
        res["n_patterns"] = rec["n_patterns"]
        res["config_hash"] = rec["config_hash"]
        if "curve" in rec:
            res.update(curve_result(rec))
        if rec.get("protection") is not None:
            res.update(protection_result(obj))
        results.append(res)
    missing = [x for x in suite.rates if not any(same_rate(x, y) for y in by_rate)]
    if missing:
        raise EntryError("results", "missing rates of suite " + show_value(suite.name) + ": "
                         + ", ".join(repr(m) for m in missing) + " (give one result record per rate)")
    dup = {}
    for res, p in zip(results, paths):
        if res["attack"] in dup:
            raise EntryError("attack", f"duplicate attack {show_value(res['attack'])}: {dup[res['attack']]} and {p}")
        dup[res["attack"]] = p
    results.sort(key=lambda r: (r["rate"] is None, r["rate"] or 0.0, r["attack"]))

    combined = hashlib.sha256(json.dumps(sorted((r["attack"], r["config_hash"]) for r in results))
                              .encode()).hexdigest()[:16]
    uniq = lambda key: "; ".join(sorted({str(r[key]) for r in records if r.get(key) is not None})) or None  # noqa
    name = name or default_entry_name(r0["model"], r0["defense"])
    entry = {
        "format": FORMAT,
        "suite": suite.name,
        "name": name,
        "model": r0["model"],
        "model_options": r0["model_options"],
        "n_params": r0["n_params"],
        **({"model_source": "user"} if r0.get("model_source") == "user" else {}),
        "defense": r0["defense"],
        "defense_name": r0.get("defense_name") or r0["defense"].split(":", 1)[0],
        "defense_params": r0["defense_params"],
        "bits": r0["bits"],
        "protocol": {**suite.protocol, "eval_split": r0["eval_split"]},
        "clean_err": clean,
        "results": results,
        "version": uniq("version"),
        "git_rev": uniq("git_rev"),
        "config_hash": combined,
        "seeds": {"train": r0.get("train_seed"), "patterns": pattern_seeds},
        "device": uniq("device"),
        "date": max(r["date"] for r in records),
        "citation": citation,
        "link": link,
        "reported_by": "benchmark",
    }
    if any(r.get("protection") is not None for r in records):
        entry["memory_overhead"] = _same_everywhere(records, paths, "memory_overhead", approx=True)
    validate_entry(entry, suite)
    return entry


def checkpoint_field(checkpoint: str | os.PathLike, entry_dir: str | os.PathLike, records=()) -> dict:
    """The entry's ``checkpoint`` object for the weights file ``checkpoint``: its path relative to the entry's
    folder and its SHA-256. Records measured on a checkpoint file must name the same bytes."""
    path = Path(checkpoint)
    if not path.is_file():
        raise EntryError("checkpoint", f"{path}: not a file (give the state-dict file the results were measured on)")
    digest = sha256_file(path)
    for rec in records:
        if rec.checkpoint_sha256 is not None and rec.checkpoint_sha256 != digest:
            raise EntryError("checkpoint", f"{path} has SHA-256 {digest}, but the records were measured on "
                                           f"{rec.checkpoint or 'a checkpoint'} with SHA-256 {rec.checkpoint_sha256}")
    return {"path": Path(os.path.relpath(path.resolve(), Path(entry_dir).resolve())).as_posix(), "sha256": digest}


def submit(result_files, *, name: str | None = None, citation: str | None = None, link: str | None = None,
           out_dir: str | os.PathLike | None = None, suite_file: str | os.PathLike | None = None,
           configs_dir=None, checkpoint: str | os.PathLike | None = None) -> Path:
    """Turn harness result records (one file per attack/rate of one suite, model and defense) into one validated
    entry ``<out_dir>/<suite>/<name>.json`` (default out_dir: ``leaderboard/entries``), written atomically.
    ``checkpoint``: the weights file the records were measured on (see :func:`checkpoint_field`), so that
    ``python -m benchmark run --entry`` can re-run the attacks on it.

    An existing entry of the same name is replaced. Raises :class:`EntryError` (mixed suites/defenses, duplicate
    or missing rates, protocol mismatch, malformed records) or :class:`SuiteError` (unknown suite file)."""
    if isinstance(result_files, (str, os.PathLike)):
        result_files = [result_files]
    paths = [Path(p) for p in result_files]
    if not paths:
        raise EntryError("results", "no result files given")
    seen = {}
    for p in paths:
        key = p.resolve()
        if key in seen:
            raise EntryError("results", f"{p} is given twice")
        seen[key] = p
    records = [load_record(p) for p in paths]
    _same_everywhere([r.to_json() for r in records], [str(p) for p in paths], "suite")
    suite = load_suite(suite_file if suite_file is not None else records[0].suite, configs_dir)
    if name is not None:
        if not NAME_RE.fullmatch(name):
            raise EntryError("name", f"expected letters, digits, '.', '_' or '-' (a file name), got {show_value(name)}")
    entry = entry_from_records(records, suite, paths=paths, name=name, citation=citation, link=link)
    root = Path(out_dir) if out_dir is not None else DEFAULT_ENTRIES_DIR
    if checkpoint is not None:
        ck = checkpoint_field(checkpoint, root / suite.name, records)
        entry = {**entry, "checkpoint": ck}
        entry = {k: entry[k] for k in ENTRY_FIELDS if k in entry}  # the format's field order
        validate_entry(entry, suite)
    return write_entry(entry, root / suite.name / f"{entry['name']}.json")

