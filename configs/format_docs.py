"""The field tables of docs/formats.md, generated from the declared fields (never written by hand).

docs/formats.md holds each table between ``<!-- BEGIN fields:NAME -->`` and ``<!-- END fields:NAME -->``;
:func:`update` rewrites them (``python scripts/update_format_docs.py``), :func:`stale` says which are out of date
(a test runs it).
"""

from __future__ import annotations

import re

from .entry import ENTRY_FIELDS, RESULT_FIELDS
from .record import CURVE_POINT_FIELDS, RECORD_FIELDS
from .schema import field_table

__all__ = ["TABLES", "tables", "update", "stale"]

TABLES = {
    "record": lambda: field_table(f for f in RECORD_FIELDS if f.level in ("record", "model")),
    "record-patterns": lambda: field_table(RECORD_FIELDS.at("pattern")),
    "record-trials": lambda: field_table(RECORD_FIELDS.at("trial")),
    "curve-points": lambda: field_table(CURVE_POINT_FIELDS, columns=("field", "type", "meaning")),
    "entry": lambda: field_table(ENTRY_FIELDS, columns=("field", "type", "meaning")),
    "entry-results": lambda: field_table(RESULT_FIELDS, columns=("field", "type", "meaning")),
}


def tables() -> dict:
    return {name: make() for name, make in TABLES.items()}


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN fields:{re.escape(name)} -->)\n(.*?)\n?(<!-- END fields:{re.escape(name)} -->)",
                      re.S)


def update(text: str) -> str:
    """``text`` with every marked table regenerated (a missing marker pair is an error: the docs name each)."""
    for name, table in tables().items():
        pat = _block(name)
        if not pat.search(text):
            raise ValueError(f"docs/formats.md has no markers for the table {name!r}")
        text = pat.sub(lambda m: f"{m.group(1)}\n{table}\n{m.group(3)}", text)
    return text


def stale(text: str) -> list[str]:
    """The names of the marked tables that differ from what the declarations generate."""
    out = []
    for name, table in tables().items():
        m = _block(name).search(text)
        if m is None or m.group(2) != table:
            out.append(name)
    return out
