"""The leaderboard website: a static site generated from the entry files. No server, no CDN, nothing fetched:
every page carries its style sheet, its script (``assets/site.js``, ours) and its plots (inline SVG).

    python -m benchmark leaderboard --html site/

Pages: ``index.html`` (the suites); ``<suite>/index.html``: one sortable, filterable table per threat model
(random bit errors, adversarial bit flips, energy) with its plot; ``<suite>/entries/<name>.html``: one page per
entry (defense, model, every trained model with its training seed, clean error and checkpoint SHA-256, protocol
and recipe, the command that re-runs it, its per-rate and per-flip tables and curves).

Entries are of format ``bitbench.leaderboard_entry/2``: several trained models per row; cells show ``mean [95%
CI]`` over the models and chips (the core's cell formatter, as in LEADERBOARD.md), ranks are rank groups (entries
that are not separable share a rank) and censoring-aware flip ranks (:mod:`.ranking`), censored flips show as
``> n``. The modules: :mod:`.site_values` (what is read from an entry), :mod:`.site_columns` (what the tables show:
:data:`TABLES`, :data:`COLUMNS`; a new column is one :class:`Column` declaration), :mod:`.site_plots` (inline
SVG), :mod:`.site_pages` (HTML), this one (building, writing and checking a site folder).

The site is a pure function of the entries, their suites and these declarations (same inputs, same bytes). Every
string that comes from an entry or a suite is HTML-escaped, and only plain ``http(s)://`` links become hrefs (with
``rel="noopener noreferrer"``); a Content-Security-Policy allows nothing but the page's own inline style and
script (by hash), so injected markup could not run a script even if an escape were missed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import atomic_write_text
from bitbench.configs.schema import MISSING

from .entries import DEFAULT_ENTRIES_DIR, load_entries
from .site_columns import (COLUMNS, EACH, FORMATS, TABLES, BoundColumn, Column, Format, Table,  # noqa: F401
                           expand_columns)
from .site_pages import entry_command, entry_page, index_page, render_table, suite_page, suite_sections
from .site_values import PAPER_MARK, SuiteView, Value, safe_name  # noqa: F401

__all__ = ["Value", "Format", "FORMATS", "Column", "Table", "BoundColumn", "COLUMNS", "TABLES", "EACH", "SuiteView",
           "build_site", "write_site", "check_site", "SiteError", "MANIFEST", "MISSING", "PAPER_MARK",
           "entry_command", "expand_columns", "render_table", "safe_name"]

MANIFEST = ".bitbench-site.json"  # the files a site folder holds (so that a rebuild removes stale pages)
SITE_FORMAT = "bitbench.site/1"


class SiteError(UsageError):
    """The site cannot be written where asked (e.g. a folder with files that a site build did not write)."""


def build_site(data: dict, *, columns: Sequence[Column] = COLUMNS, tables: Sequence[Table] = TABLES,
               entries_path: str = "leaderboard/entries") -> dict[str, str]:
    """``{relative path: page text}`` for ``data`` as :func:`load_entries` returns it (``{suite: (Suite,
    [entry])}``). ``entries_path``: the entries folder as the reproduce commands name it."""
    views = {name: SuiteView(suite, sorted(entries, key=lambda e: e["name"]))
             for name, (suite, entries) in sorted(data.items())}
    for name, view in views.items():  # an entry is its name everywhere (pages, rankings, cached statistics)
        paths = [view.page(e) for e in view.entries]
        dup = sorted({p for p in paths if paths.count(p) > 1})
        if dup:
            raise ValueError(f"two entries of suite {name!r} map to the page {dup[0]}")
    sections = {name: suite_sections(view, tables, columns) for name, view in views.items()}
    pages = {"index.html": index_page(views, sections)}
    for name, view in views.items():
        folder = safe_name(name)
        pages[f"{folder}/index.html"] = suite_page(view, sections[name])
        for e in view.entries:
            pages[f"{folder}/{view.page(e)}"] = entry_page(view, e, entries_path)
    return pages


# ----------------------------------------------------------------------------------------------------------------
# writing
def _entries_path(entries_dir) -> str:
    if entries_dir is None or Path(entries_dir).resolve() == DEFAULT_ENTRIES_DIR:
        return "leaderboard/entries"
    return Path(entries_dir).as_posix()


def _manifest(out: Path) -> list[str] | None:
    """The files a previous build wrote into ``out`` (None: no manifest)."""
    m = out / MANIFEST
    if not m.is_file():
        return None
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SiteError(f"{m}: damaged (not a site manifest); remove the folder {out} and build again") from None
    if not isinstance(data, dict) or data.get("format") != SITE_FORMAT or not isinstance(data.get("files"), list):
        raise SiteError(f"{m}: not a {SITE_FORMAT} manifest; remove the folder {out} and build again")
    return [f for f in data["files"] if isinstance(f, str)]


def write_site(out_dir: str | os.PathLike, entries_dir=None, suites=None, *, configs_dir=None,
               columns: Sequence[Column] = COLUMNS, tables: Sequence[Table] = TABLES) -> Path:
    """Generate the site and write it into ``out_dir`` (created if needed): each page atomically, pages of an
    earlier build that are gone removed. A folder that holds files but no site manifest is refused
    (:class:`SiteError`): the build never overwrites what it did not write."""
    out = Path(out_dir)
    data = load_entries(entries_dir if entries_dir is not None else DEFAULT_ENTRIES_DIR, suites,
                        configs_dir=configs_dir)
    pages = build_site(data, columns=columns, tables=tables, entries_path=_entries_path(entries_dir))
    if out.exists() and not out.is_dir():
        raise SiteError(f"{out}: not a folder")
    old = _manifest(out) if out.is_dir() else None
    if old is None and out.is_dir() and any(out.iterdir()):
        raise SiteError(f"{out}: the folder holds files that no site build wrote; give an empty or new folder")
    for rel, text in pages.items():
        atomic_write_text(out / rel, text)
    base = out.resolve()
    for rel in sorted(set(old or []) - set(pages)):
        p = (out / rel).resolve()
        if base in p.parents and p.is_file():
            p.unlink()
            d = p.parent
            while d != base and d.is_dir() and not any(d.iterdir()):
                d.rmdir()
                d = d.parent
    atomic_write_text(out / MANIFEST, json.dumps({"format": SITE_FORMAT, "files": sorted(pages)}, indent=1) + "\n")
    return out


def check_site(out_dir: str | os.PathLike, entries_dir=None, suites=None, *, configs_dir=None,
               columns: Sequence[Column] = COLUMNS, tables: Sequence[Table] = TABLES) -> list[str]:
    """What is stale in the site folder ``out_dir`` (empty: exactly what :func:`write_site` would write)."""
    out = Path(out_dir)
    data = load_entries(entries_dir if entries_dir is not None else DEFAULT_ENTRIES_DIR, suites,
                        configs_dir=configs_dir)
    pages = build_site(data, columns=columns, tables=tables, entries_path=_entries_path(entries_dir))
    if not out.is_dir():
        return [f"{out} does not exist"]
    problems = []
    for rel, text in pages.items():
        p = out / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif p.read_text(encoding="utf-8") != text:
            problems.append(f"{rel} differs")
    old = _manifest(out) or []
    problems += [f"{rel} is stale (no longer generated)" for rel in sorted(set(old) - set(pages))
                 if (out / rel).is_file()]
    return problems
