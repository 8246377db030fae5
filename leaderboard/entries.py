"""Reading entries, turning harness result records into an entry (`submit`), and writing entries atomically.

The entry files themselves live in the data folder ``leaderboard/entries/<suite>/<name>.json`` (next to this
module; a folder without ``__init__.py``, so it does not shadow this module).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from bitbench.configs.cells import group_cells
from bitbench.configs.entry import (NAME_RE, EntryError, default_entry_name, entry_from_cells,
                                    show_value, validate_entry)
from bitbench.configs.energy import TOLERABLE_FORMAT, check_analysis
from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import JSONFileError, atomic_write_text, read_json, sha256_file
from bitbench.configs.record import RecordError, ResultRecord
from bitbench.configs.suite import Suite, SuiteError, load_suite

__all__ = ["DEFAULT_ENTRIES_DIR", "load_entry", "load_entries", "load_record", "entry_from_records", "submit",
           "write_entry", "dumps_entry", "entry_files", "default_entry_name", "checkpoint_fields"]

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
        return read_json(path)
    except JSONFileError as e:
        raise EntryError("", e.reason, path) from None


def _check_depth(obj, path, limit: int = 64) -> None:
    """Refuse a structure nested deeper than any file of the project (``limit`` levels) before it is validated."""
    stack = [(obj, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                raise EntryError("", f"not a file of this project: its JSON is nested more than {limit} levels deep",
                                 path)
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))


def load_entry(path: str | os.PathLike, suite: Suite | None = None, *, configs_dir=None) -> dict:
    """Read and validate one entry file; its folder must be its suite and its file name its ``name``.

    Without ``suite`` the suite file is looked up by the entry's ``suite`` (unknown suite: refused)."""
    path = Path(path)
    entry = _read_json(path)
    try:
        _check_depth(entry, path)
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
    _check_depth(data, path)
    try:
        rec = ResultRecord.from_json(data, source=path)
    except RecordError as e:
        raise EntryError(e.field, e.reason, path) from None
    rec.path = str(path)
    return rec


def entry_from_records(records: list[ResultRecord], suite: Suite, *, name: str | None = None,
                       citation: str | None = None, link: str | None = None, checkpoints: list | None = None,
                       tolerable: list | None = None) -> dict:
    """Build (and validate against ``suite``) one entry from result records of one suite, model and defense: one
    record per (attack, trained model); every attack's records of the same models; ``tolerable``: analysis objects
    (``bitbench.tolerable/1``) of the same models."""
    if not records:
        raise EntryError("results", "no result records given")
    return entry_from_cells(group_cells(records), suite, name=name, citation=citation, link=link,
                            checkpoints=checkpoints, tolerable=tolerable)


def checkpoint_fields(checkpoints, entry_dir: str | os.PathLike, records, weights_digest=None) -> list[dict]:
    """The entry's ``checkpoints``: per weights file (a state dict), its path relative to the entry's folder, its
    SHA-256 and the training seed of the model it holds. A file is matched to a model by the SHA-256 of the file
    its records were loaded from (``checkpoint_sha256``) or, with ``weights_digest(path) -> weights_sha256`` (the
    command line passes one; it needs torch), by the digest of the weights it holds; a file that matches no model
    of the records is refused."""
    out, used = [], {}
    for c in checkpoints:
        path = Path(c)
        if not path.is_file():
            raise EntryError("checkpoint", f"{path}: not a file (give the state-dict file the results were measured "
                                           "on)")
        digest = sha256_file(path)
        match = [r for r in records if r.checkpoint_sha256 == digest]
        if not match and weights_digest is None and any(r.checkpoint_sha256 is None and r.weights_sha256
                                                         for r in records):
            raise EntryError("checkpoint", f"{path} must be checked against the records' weights_sha256, which "
                                           "needs torch: use `python -m benchmark submit ... --checkpoint FILE`")
        if not match and weights_digest is not None:
            try:
                wd = weights_digest(str(path))
            except UsageError as e:
                raise EntryError("checkpoint", str(e)) from None
            match = [r for r in records if r.weights_sha256 is not None and r.weights_sha256 == wd]
        if not match:
            seeds = sorted({r.train_seed for r in records}, key=lambda s: (s is None, s or 0))
            raise EntryError("checkpoint", f"the weights in {path} (SHA-256 {digest}) are not the weights the records "
                                           f"were measured on: it holds none of their models (models {seeds}; their "
                                           "weights digests and checkpoint files differ): give the file written by "
                                           "`train --save-weights` for each model")
        seed = match[0].train_seed
        if seed in used:
            raise EntryError("checkpoint", f"{path} and {used[seed]} both hold model {seed}")
        used[seed] = path
        out.append({"path": Path(os.path.relpath(path.resolve(), Path(entry_dir).resolve())).as_posix(),
                    "sha256": digest, "train_seed": seed})
    return sorted(out, key=lambda c: (c["train_seed"] is None, c["train_seed"] or 0))


def submit(result_files, *, name: str | None = None, citation: str | None = None, link: str | None = None,
           out_dir: str | os.PathLike | None = None, suite_file: str | os.PathLike | None = None,
           configs_dir=None, checkpoints=(), weights_digest=None) -> Path:
    """Turn harness result records (one file per attack/rate and trained model, of one suite, model and defense)
    into one validated entry ``<out_dir>/<suite>/<name>.json`` (default out_dir: ``leaderboard/entries``), written
    atomically. ``checkpoints``: the weights files of the models (see :func:`checkpoint_fields`), so that
    ``python -m benchmark run --entry`` can re-run the attacks on them; an entry without them says it is not
    re-evaluable.

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
    analyses, record_paths = [], []
    for p in paths:
        data = _read_json(p)
        if isinstance(data, dict) and data.get("format") == TOLERABLE_FORMAT:
            try:
                check_analysis(data)
            except EntryError as e:
                raise e.with_source(p) from None
            analyses.append(data)
        else:
            record_paths.append(p)
    if not record_paths:
        raise EntryError("results", "only tolerable-rate analyses given; an entry needs the result records of every "
                                    "rate of the suite too")
    records = [load_record(p) for p in record_paths]
    suites = sorted({r.suite for r in records})
    if len(suites) > 1:
        raise EntryError("suite", f"the records are of several suites ({', '.join(suites)}); one entry holds one suite")
    suite = load_suite(suite_file if suite_file is not None else records[0].suite, configs_dir)
    if name is not None and not NAME_RE.fullmatch(name):
        raise EntryError("name", f"expected letters, digits, '.', '_' or '-' (a file name), got {show_value(name)}")
    root = Path(out_dir) if out_dir is not None else DEFAULT_ENTRIES_DIR
    cks = checkpoint_fields(list(checkpoints or ()), root / suite.name, records, weights_digest)
    entry = entry_from_records(records, suite, name=name, citation=citation, link=link, checkpoints=cks,
                               tolerable=analyses)
    return write_entry(entry, root / suite.name / f"{entry['name']}.json")
