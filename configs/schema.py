"""The declared result schema: one declaration per field of a result record and of a leaderboard entry.

A :class:`Field` says everything the project needs to know about one quantity: its name and value type
(:class:`Kind`), its *level* -- one value per cell (``record``), per trained model (``model``), per bit-error
pattern (``pattern``, a "chip") or per adversarial trial (``trial``) --, whether it is required or its default, how
it projects into a leaderboard entry, its column title and number format, when it is undefined, and a one-line
doc. Everything else is derived from the declarations: reading and writing records and entries, their validation,
the entry projection, the cells of every table (terminal and LEADERBOARD.md share :func:`format_cell`) and the field
tables of docs/formats.md (:func:`field_table`).

Values are plain JSON values; errors and rates are fractions in [0, 1] (tables show percent).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import UsageError

__all__ = ["LEVELS", "Kind", "Field", "FormatError", "REQUIRED", "KINDS", "optional", "list_of", "format_cell",
           "format_number", "summary_cell", "field_table", "check_value", "show_value", "MISSING", "is_num", "is_int",
           "markdown_text", "safe_link"]

LEVELS = ("record", "model", "pattern", "trial")
MISSING = "–"  # the cell of an undefined or unavailable value, in every table


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


class FormatError(UsageError):
    """A file (result record, leaderboard entry, ...) that is malformed or inconsistent: ``[source: ]field: reason``.

    The one error type of every declared format (``RecordError`` and ``EntryError`` are its names in the record and
    entry modules)."""

    def __init__(self, field: str, reason: str, source=None):
        self.field, self.reason, self.source = field, reason, None if source is None else str(source)
        msg = f"{field}: {reason}" if field else reason
        super().__init__(f"{self.source}: {msg}" if self.source else msg)

    def with_source(self, source) -> "FormatError":
        return type(self)(self.field, self.reason, source)


def show_value(v: Any) -> str:
    """A value as it appears in an error message (its JSON text where possible, at most 200 characters)."""
    try:
        s = json.dumps(v, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 200 else s[:197] + "..."


def is_num(v) -> bool:
    """A finite JSON number (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Kind:
    """A value type: ``check(v)`` says whether ``v`` is one; ``want`` says what one is, for messages."""

    name: str
    check: Callable[[Any], bool]
    want: str


def optional(kind: Kind) -> Kind:
    return Kind(kind.name + "?", lambda v: v is None or kind.check(v), kind.want + " or null")


def list_of(kind: Kind) -> Kind:
    return Kind(f"[{kind.name}]", lambda v: isinstance(v, list) and all(kind.check(x) for x in v),
                f"a list of {kind.want.removeprefix('a ').removeprefix('an ')}s")


_SHA256 = re.compile(r"[0-9a-f]{64}")
_IDENT = re.compile(r"[a-z][a-z0-9_]*")
KINDS = {
    "str": Kind("str", lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "text": Kind("text", lambda v: isinstance(v, str), "a string"),
    "ident": Kind("ident", lambda v: isinstance(v, str) and bool(_IDENT.fullmatch(v)),
                  "an identifier ([a-z][a-z0-9_]*)"),
    "int": Kind("int", is_int, "an integer"),
    "count": Kind("count", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    "posint": Kind("posint", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    "frac": Kind("frac", lambda v: is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "num": Kind("num", is_num, "a finite number"),
    "nonneg": Kind("nonneg", lambda v: is_num(v) and v >= 0, "a number >= 0"),
    "bool": Kind("bool", lambda v: isinstance(v, bool), "true or false"),
    "dict": Kind("dict", lambda v: isinstance(v, dict), "an object"),
    "list": Kind("list", lambda v: isinstance(v, list), "a list"),
    "sha256": Kind("sha256", lambda v: isinstance(v, str) and bool(_SHA256.fullmatch(v)),
                   "64 lowercase hex digits (SHA-256)"),
    "digest": Kind("digest", lambda v: isinstance(v, str) and v.startswith("sha256:")
                   and bool(_SHA256.fullmatch(v[7:])), '"sha256:" and 64 lowercase hex digits'),
    "any": Kind("any", lambda v: True, "a value"),
}


@dataclass(frozen=True)
class Field:
    """One declared quantity (module docstring).

    Attributes:
        name: the JSON key (and Python attribute).
        kind: the value type (a :class:`Kind` or a key of :data:`KINDS`).
        level: ``record`` | ``model`` | ``pattern`` | ``trial``.
        doc: one line: what it is, its unit and convention.
        default: the value of an absent field (:data:`REQUIRED`: it must be present).
        title: column title in tables (None: never a column).
        fmt: how a cell shows a value: ``pct`` (a fraction as percent, 2 decimals), ``pct1``, ``num`` (3
            significant digits), ``ms`` (2 decimals), ``int``, ``text``, ``flips``.
        entry: how it projects into a leaderboard entry: None (not at all), ``entry`` (a field of the entry),
            ``result`` (a field of each of its results).
        lower_is_better: the sort direction of a column (None: not a ranking quantity).
        clean: pattern-level quantities: whether the clean (unperturbed) memory has a value too (``err``: yes,
            ``rerr``: no).
        summary: pattern-level numbers: whether records carry their summary (mean, std, min, max over patterns).
        undefined: when the quantity does not exist for a record (its cells then show :data:`MISSING`), e.g. "no
            target"; empty: always defined.
        show: when a column is shown: ``always``, ``any`` (only when some row has a non-zero value), ``request``
            (only when asked for, e.g. ``--outcomes``).
        agg: how a table cell aggregates the per-pattern values of a cell: ``mean`` (mean over models and chips with
            its 95% CI) or ``any`` (the patterns with a non-zero value, of all patterns: ``k/n``).
    """

    name: str
    kind: Any
    level: str
    doc: str
    default: Any = REQUIRED
    title: str | None = None
    fmt: str = "text"
    entry: str | None = None
    lower_is_better: bool | None = None
    clean: bool = False
    summary: bool = False
    undefined: str = ""
    show: str = "always"
    agg: str = "mean"

    def __post_init__(self):
        if isinstance(self.kind, str):
            object.__setattr__(self, "kind", KINDS[self.kind])
        if self.level not in LEVELS:
            raise ValueError(f"field {self.name!r}: level must be one of {LEVELS}, got {self.level!r}")
        if self.entry not in (None, "entry", "result"):
            raise ValueError(f"field {self.name!r}: entry must be None, 'entry' or 'result', got {self.entry!r}")
        if self.fmt not in _FORMATS:
            raise ValueError(f"field {self.name!r}: fmt must be one of {sorted(_FORMATS)}, got {self.fmt!r}")
        if self.agg not in ("mean", "any"):
            raise ValueError(f"field {self.name!r}: agg must be 'mean' or 'any', got {self.agg!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"field name {self.name!r}: lowercase letters, digits and '_' only")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, v, path: str | None = None) -> None:
        """Raise :class:`FormatError` (``path``: the field's place in the file) unless ``v`` is of this kind."""
        check_value(self.kind, v, path or self.name)


def check_value(kind: Kind, v, path: str) -> None:
    if not kind.check(v):
        raise FormatError(path, f"expected {kind.want}, got {show_value(v)}")


# -- cells ------------------------------------------------------------------------------------------------------------
def _pct(v: float, digits: int = 2) -> str:
    return f"{100 * v:.{digits}f}"


_FORMATS: dict[str, Callable[[Any], str]] = {
    "pct": lambda v: _pct(v),
    "pct1": lambda v: _pct(v, 1),
    "num": lambda v: f"{v:.3g}",
    "ms": lambda v: f"{v:.2f}",
    "int": lambda v: f"{int(v)}",
    "text": lambda v: str(v),
    "flips": lambda v: f"{v:g}",
}


def format_number(fmt: str, v) -> str:
    """One value as a table cell in format ``fmt`` (see :class:`Field`); None is :data:`MISSING`."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    return _FORMATS[fmt](v)


def format_cell(fmt: str, value, *, interval=None, spread=None, style: str = "ci") -> str:
    """The one cell formatter of every table (terminal tables, LEADERBOARD.md, the website's text).

    ``value``: a number (None: :data:`MISSING`); ``interval``: its ``(lo, hi)`` 95% confidence interval (shown as
    ``mean [lo, hi]`` with ``style='ci'``); ``spread``: a standard deviation (``mean ± sd`` with ``style='sd'``).
    ``style='mean'`` shows the value alone."""
    cell = format_number(fmt, value)
    if cell == MISSING:
        return cell
    if style == "ci" and interval is not None and interval[0] is not None:
        lo, hi = interval
        if format_number(fmt, lo) != cell or format_number(fmt, hi) != cell:
            return f"{cell} [{format_number(fmt, lo)}, {format_number(fmt, hi)}]"
        return cell
    if style == "sd" and spread is not None:
        return f"{cell} ± {format_number(fmt, spread)}"
    return cell


def summary_cell(field: "Field", summary: dict | None, *, style: str = "ci", values=None) -> str:
    """The cell of a quantity in every table, from its summary ``{mean, model_sd, chip_sd, ci95}`` (entries and
    cells share the shape): ``mean [lo, hi]`` (``style='ci'``), ``mean ± chip sd`` (``'sd'``) or the mean alone
    (``'mean'``). Fields with ``agg='any'`` show ``k/n``: the patterns (of all models) with a non-zero value, from
    ``values`` (a models x patterns matrix)."""
    if field.agg == "any":
        if values is None:
            return MISSING
        flat = [v for row in values for v in row]
        return f"{sum(1 for v in flat if v)}/{len(flat)}" if flat else MISSING
    if summary is None or summary.get("mean") is None:
        return MISSING
    ci = summary.get("ci95")
    spread = summary.get("chip_sd") if summary.get("chip_sd") is not None else summary.get("model_sd")
    return format_cell(field.fmt, summary["mean"], interval=tuple(ci) if ci else None, spread=spread, style=style)


# -- strings that enter markdown or HTML ------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<|~])")


def markdown_text(s: str) -> str:
    """``s`` as literal text inside a markdown table cell: the characters that start emphasis, code, links, images,
    HTML or strike-through escaped, ``|`` escaped (it would end the cell), line breaks as spaces."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(s).split()))


_LINK = re.compile(r"https?://[A-Za-z0-9\-._~:/?#@!$&'*+,;=%]+")


def safe_link(url) -> str | None:
    """``url`` if it is a plain http(s) URL that can enter markdown or HTML as a link target unchanged (no spaces,
    parentheses, angle brackets, quotes, ``|`` or backslashes); None otherwise."""
    if not isinstance(url, str) or not _LINK.fullmatch(url) or "'" in url:
        return None
    return url


# -- docs -------------------------------------------------------------------------------------------------------------
def field_table(fields: Iterable[Field], *, columns=("field", "type", "level", "meaning")) -> str:
    """A markdown table of declared fields (the field tables of docs/formats.md are generated by this)."""
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for f in fields:
        kind = f.kind.name.replace("|", "\\|")
        meaning = f.doc + ("" if f.required else f" (optional; default `{json.dumps(f.default)}`)")
        if f.undefined:
            meaning += f"; undefined: {f.undefined}"
        cells = {"field": f"`{f.name}`", "type": kind, "level": f.level, "meaning": meaning.replace("|", "\\|")}
        rows.append("| " + " | ".join(cells[c] for c in columns) + " |")
    return "\n".join(rows)


@dataclass
class FieldSet:
    """An ordered collection of fields with lookup by name (the fields of one format, or of one level)."""

    fields: list = field(default_factory=list)

    def __iter__(self):
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def get(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    def at(self, level: str) -> list[Field]:
        return [f for f in self.fields if f.level == level]
