"""The website's HTML: table cells and headers, the threat-model tables, and the three kinds of page (the index of
suites, a suite's tables, an entry's page).

Every string that comes from an entry or a suite is HTML-escaped (:func:`esc`); only plain ``http(s)://`` links
(:func:`bitbench.configs.schema.safe_link`) become hrefs, with ``rel="noopener noreferrer"``; every page carries a
Content-Security-Policy that allows nothing but its own inline style and script (by hash). Numbers are written by
the core's one cell formatter (:mod:`bitbench.configs.schema`), so cells read as in LEADERBOARD.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import re
from html import escape
from pathlib import Path
from typing import Iterable, Sequence

from bitbench.configs.entry import entry_pattern_fields
from bitbench.configs.schema import MISSING, format_number, safe_link, summary_cell
from bitbench.configs.suite import Suite, format_rate

from .ranking import entry_flips, result_of
from .site_columns import COLUMNS, FORMATS, BoundColumn, Column, Table, expand_columns
from .site_plots import entry_flips_plot, entry_rate_plot
from .site_values import (PAPER_MARK, RERR, SuiteView, Value, curved, flips_parts, is_paper, per_model_text,
                          quantity_summary, safe_name, seed_words, trial_flips)

__all__ = ["esc", "render_cell", "render_header", "render_table", "suite_page", "index_page", "entry_page",
           "entry_command", "retrain_command"]

_ASSETS = Path(__file__).resolve().parent / "assets"


def esc(s) -> str:
    return escape(str(s), quote=True)


def _link(url, text=None) -> str:
    """An external link where ``url`` is a plain http(s) URL, else the text alone (escaped)."""
    h = safe_link(url)
    shown = esc(url if text is None else text)
    return shown if h is None else f'<a href="{esc(h)}" rel="noopener noreferrer">{shown}</a>'


# ----------------------------------------------------------------------------------------------------------------
# cells and tables
def _missing(v: Value | None) -> bool:
    return v is None or v.missing


def render_cell(col: BoundColumn, val: Value | None) -> str:
    """One ``<td>``: the number (``data-sort``; ``data-bound`` for a censoring bound) as the core formats it, its
    interval muted (``mean [lo, hi]``), the hover text in ``title``."""
    fmt = FORMATS[col.fmt]
    classes = (["num"] if fmt.numeric else []) + (["emph"] if col.emphasis else [])
    attrs = ""
    if _missing(val):
        classes.append("missing")
        body = MISSING
        note = val.note if val is not None else ""
    else:
        note = val.note
        if fmt.numeric and val.v is not None:
            attrs += f' data-sort="{float(val.v)!r}"'
            if val.bound:
                attrs += f' data-bound="{1 if val.bound == ">" else -1}"'
        if val.text is not None:
            body = esc(val.text)
        else:
            main = fmt.number(val.v)
            body = (esc(val.bound) + " " if val.bound else "") + esc(main)
            if fmt.numeric and val.lo is not None and val.hi is not None:
                full = fmt.cell(val.v, val.lo, val.hi)
                rest = full[len(main):].strip() if full.startswith(main) else ""
                if rest:
                    body += f' <span class="pm">{esc(rest)}</span>'
        if val.interval:
            note = "; ".join(x for x in (val.interval, note) if x)
        if col.fmt == "code":
            body = f"<code>{body}</code>"
        if val.href is not None:
            body = f'<a href="{esc(val.href)}">{body}</a>'
        if val.mark:
            body += " " + esc(val.mark)
        if val.detail:
            body += f' <span class="pm">{esc(val.detail)}</span>'
    cls = f' class="{" ".join(classes)}"' if classes else ""
    title = f' title="{esc(note)}"' if note else ""
    return f"<td{cls}{attrs}{title}>{body}</td>"


def render_header(col: BoundColumn) -> str:
    fmt = FORMATS[col.fmt]
    classes = (["num"] if fmt.numeric else []) + (["emph"] if col.emphasis else [])
    cls = f' class="{" ".join(classes)}"' if classes else ""
    doc = col.doc + (f" ({fmt.unit})" if fmt.unit else "") + (f"; {col.better} is better" if col.better else "")
    return (f'<th{cls} data-key="{esc(col.key)}" data-type="{"num" if fmt.numeric else "text"}" '
            f'data-better="{col.better or ""}" title="{esc(doc)}"><button type="button">{esc(col.title)}</button></th>')


def render_table(view: SuiteView, table: Table, columns: Sequence[Column] = COLUMNS) -> str | None:
    """One threat model's table (HTML), or None when no entry has a value in any of its metric columns."""
    cols = expand_columns(view, table.key, columns)
    metrics = [c for c in cols if c.role == "metric"]
    if not metrics:
        return None
    rows = []
    for e in table.order(view):
        cells = {c.key: c.get(e) for c in cols}
        if not table.every_entry and all(_missing(cells[c.key]) for c in metrics):
            continue
        words = " ".join([e["name"], e["defense"], e["model"]]).lower()
        rows.append(f'<tr data-entry="{esc(e["name"])}" data-filter="{esc(words)}">'
                    + "".join(render_cell(c, cells[c.key]) for c in cols) + "</tr>")
    if not rows:
        return None
    tid = f"t-{table.key}"
    out = [f'<section id="{esc(table.key)}">', f"<h2>{esc(table.title)}</h2>", f'<p class="muted">{esc(table.doc)} '
           "Errors in %; click a header to sort (best first), again to reverse; missing values (–) stay last.</p>",
           '<div class="scroll">', f'<table class="board" id="{esc(tid)}">',
           "<thead><tr>" + "".join(render_header(c) for c in cols) + "</tr></thead>",
           "<tbody>", *rows, "</tbody></table></div>",
           f'<p><span class="count" data-table="{esc(tid)}">{len(rows)} rows</span></p>',
           "<details><summary>Columns</summary>", '<dl class="columns">']
    seen = set()
    for c in cols:
        if c.title not in seen:
            seen.add(c.title)
            out.append(f"<dt>{esc(c.title)}</dt><dd>{esc(c.doc)}</dd>")
    out.append("</dl></details>")
    if table.plot is not None:
        svg = table.plot(view, f"plot-{table.key}")
        if svg:
            out.append(f"<figure>{svg}</figure>")
    out.append("</section>")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# the page frame
def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def _page(title: str, body: str, *, root: str, nav: Sequence[tuple[str, str]] = (), script: bool = False) -> str:
    css = _asset("site.css")
    js = _asset("site.js") if script else ""
    csp = (f"default-src 'none'; style-src {_csp_hash(css)}; img-src data:; base-uri 'none'; form-action 'none'"
           + (f"; script-src {_csp_hash(js)}" if script else ""))
    crumbs = "".join(f'<a href="{esc(h)}">{esc(t)}</a>' for h, t in nav)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{esc(title)}</title>", f"<style>{css}</style>", "</head>", "<body>",
        f'<header class="top"><a class="brand" href="{esc(root)}index.html">bitbench leaderboard</a>'
        f"<nav>{crumbs}</nav></header>", "<main>", body, "</main>",
        '<footer>Generated from the entry files (one JSON file per row) by <code>python -m benchmark leaderboard '
        "--html</code>; every row names the command that re-runs it.</footer>",
        *([f"<script>{js}</script>"] if script else []), "</body>", "</html>", ""])


def _kv(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table; values are HTML already (escape them before)."""
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _grid(heads: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool]) -> str:
    """A results table of texts (escaped here); ``numeric``: right-aligned columns."""
    def cls(i):
        return ' class="num"' if numeric[i] else ""

    return ('<div class="scroll"><table class="results"><thead><tr>'
            + "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(heads)) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td{cls(i)}>{esc(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                      for r in rows) + "</tbody></table></div>")


def _json(v) -> str:
    return esc(json.dumps(v, ensure_ascii=False, sort_keys=False))


def _pct(x) -> str:
    return format_number("pct", x)


# ----------------------------------------------------------------------------------------------------------------
# index and suite pages
def _protocol(suite: Suite) -> str:
    p = suite.protocol
    split = p["eval_split"] or "the dataset's evaluation split"
    rates = ", ".join(format_rate(r) for r in suite.rates) or "none"
    head = format_rate(suite.headline_rate) if suite.headline_rate is not None else MISSING
    return (f"Protocol: dataset {p['dataset']}, evaluation images {split}, {p['bits']} bit (unless the defense "
            f"sets its own width: column Bits), {p['patterns']} random bit error patterns per rate (seeds "
            f"{suite.base_seed}..{suite.base_seed + suite.patterns - 1}, the same for every model), rates {rates}; "
            f"headline rate {head}.")


def suite_sections(view: SuiteView, tables: Sequence[Table], columns: Sequence[Column]) -> list:
    """``[(table, html)]`` of the tables that have rows."""
    return [(t, x) for t in tables for x in [render_table(view, t, columns)] if x]


def suite_page(view: SuiteView, sections: list) -> str:
    s = view.suite
    parts = [f"<h1>Suite {esc(s.name)}</h1>"]
    if s.description:
        parts.append(f'<p class="lead">{esc(" ".join(s.description.split()))}</p>')
    parts.append(f'<p class="protocol">{esc(_protocol(s))}</p>')
    if not sections:
        parts.append("<p>No entries yet.</p>")
    else:
        parts.append('<div class="filterbar"><input type="search" id="filter" hidden placeholder="Filter rows by '
                     'entry, defense or model" aria-label="Filter rows by entry, defense or model"></div>')
        parts.append("<p>" + " · ".join(f'<a href="#{esc(t.key)}">{esc(t.title)}</a>' for t, _ in sections) + "</p>")
        parts += [x for _, x in sections]
    papers = sorted({(e.get("citation") or "", e.get("link") or "") for e in view.entries if is_paper(e)})
    if papers:
        parts.append(f"<p>{PAPER_MARK} Reported by the paper, not reproduced by this benchmark: "
                     + "; ".join(esc(c) + (f" ({_link(l)})" if l else "") for c, l in papers) + ".</p>")
    notes = [(e, n) for e in sorted(view.entries, key=lambda e: e["name"]) for n in (e.get("notes") or [])]
    notes += [(e, f"at {format_rate(r['rate'])}: {r['note']}" if r["rate"] is not None else f"{r['attack']}: "
               f"{r['note']}") for e in sorted(view.entries, key=lambda e: e["name"]) for r in e["results"]
              if r.get("note")]
    if notes:
        parts.append("<h3>Notes</h3><ul class=\"plain\">" + "".join(
            f'<li><a href="{esc(view.page(e))}">{esc(e["name"])}</a>: {esc(" ".join(n.split()))}</li>'
            for e, n in notes) + "</ul>")
    return _page(f"bitbench leaderboard: suite {s.name}", "\n".join(parts), root="../",
                 nav=[("../index.html", "suites")], script=bool(sections))


def index_page(views: dict, sections: dict) -> str:
    rows = []
    for name, view in views.items():
        s = view.suite
        best = [e for r, e in view.random_ranked if r == 1]
        head = format_rate(s.headline_rate) if s.headline_rate is not None else MISSING
        present = [t.title for t, _ in sections[name]]
        folder = esc(safe_name(name))
        links = ", ".join(f'<a href="{folder}/{esc(view.page(e))}">{esc(e["name"])}</a>' for e in best)
        rows.append("<tr>" + f'<td><a href="{folder}/index.html">{esc(name)}</a></td>'
                    + f'<td class="desc">{esc(" ".join(s.description.split()) or MISSING)}</td>'
                    + f'<td class="num">{len(view.entries)}</td>'
                    + f"<td>{esc(', '.join(present) or MISSING)}</td>"
                    + f'<td class="num">{esc(head)}</td>'
                    + f"<td>{links + (' (not separable)' if len(best) > 1 else '') if best else MISSING}</td>"
                    + "</tr>")
    body = ("<h1>Bit error robustness leaderboard</h1>"
            '<p class="lead">How quantized neural-network weights survive bit errors: random flips of low-voltage '
            "memories (rate p) and bits chosen by an attacker. One row per submitted (model, defense), measured on "
            "several trained models, each row one JSON file; numbers are means with 95% confidence intervals over "
            "the models and chips, ranks are rank groups (entries that are not separable share a rank); every "
            "entry page names the command that re-runs it.</p>"
            + ("<p>No entries yet.</p>" if not rows else
               '<div class="scroll"><table class="suites"><thead><tr><th>Suite</th><th>Description</th>'
               '<th class="num">Entries</th><th>Tables</th><th class="num">Headline p</th><th>Best at headline '
               "(rank 1)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"))
    return _page("bitbench leaderboard", body, root="")


# ----------------------------------------------------------------------------------------------------------------
# the entry page, one section per function
def _shell(word: str) -> str:
    """A shell word (quoted where it holds characters the shell treats specially)."""
    return word if re.fullmatch(r"[A-Za-z0-9_.,:=+/@%-]+", word) else "'" + word.replace("'", "'\\''") + "'"


def entry_command(entry: dict, entries_path: str = "leaderboard/entries") -> str:
    """The command that re-runs an entry's attacks on the checkpoints it names."""
    return f"python -m benchmark run --entry {entries_path.rstrip('/')}/{entry['suite']}/{entry['name']}.json"


def retrain_command(entry: dict) -> str | None:
    """The command that trains the entry's models with the suite's recipe and runs the suite's attacks (None for a
    supplied model: no training seed)."""
    seeds = entry["train_seeds"]
    if any(s is None for s in seeds):
        return None
    return (f"python -m benchmark run --suite {_shell(entry['suite'])} --defense {_shell(entry['defense'])} "
            f"--train-seeds {','.join(str(s) for s in seeds)}")


def _reproduce(view: SuiteView, e: dict, entries_path: str) -> str:
    parts = ["<h2>Reproduce</h2>"]
    if is_paper(e):
        return parts[0] + (f"<p>Reported by a paper, not reproduced by this benchmark: {esc(e.get('citation') or '')}"
                           + (f" ({_link(e['link'])})" if e.get("link") else "") + ".</p>")
    parts.append(f"<pre><code>{esc(entry_command(e, entries_path))}</code></pre>")
    cks = e.get("checkpoints") or []
    n = len(e["train_seeds"])
    if cks:
        parts.append(f"<p>Loads each of the {len(cks)} checkpoint{'s' if len(cks) > 1 else ''} below (its SHA-256 is "
                     "checked), quantizes it with the entry's defense, runs the entry's attacks on that model and "
                     "says how many results it reproduced exactly.</p>")
        if len(cks) < n:
            parts.append(f'<p class="warn">The entry names checkpoints of {len(cks)} of its {n} models; the others '
                         "are not re-evaluated.</p>")
    elif e.get("model_source") == "user":
        parts.append('<p class="warn">This entry names no checkpoint, so the command above refuses it: the results '
                     "were measured on the submitter's own weights, which are not part of the leaderboard.</p>")
    else:
        retrain = retrain_command(e)
        parts.append('<p class="warn">This entry names no checkpoint, so the command above refuses it.'
                     + (" Training the models with the suite's recipe and running the suite's attacks instead:</p>"
                        f"<pre><code>{esc(retrain)}</code></pre>" if retrain else "</p>"))
    return "".join(parts)


def _summary(view: SuiteView, e: dict) -> str:
    s = view.suite
    rank = view.random_rank.get(e["name"])
    rows = [("Rank (random bit errors)", esc(f"{rank} of {len(view.entries)}") + ' <span class="muted">(rank '
             "group: 1 + the entries significantly better)</span>" if rank else MISSING),
            ("Models", esc(seed_words(e) if is_paper(e) else len(e["train_seeds"]))),
            ("Clean Err %", esc(_pct(e["clean_err"]))
             + (' <span class="muted">(mean over the models)</span>' if len(e["train_seeds"]) > 1 else ""))]
    if s.headline_rate is not None:
        r = view.headline(e)
        cell = summary_cell(RERR, (r or {}).get("summary", {}).get("rerr"))
        rows.append((f"RErr % at p = {format_rate(s.headline_rate)}", esc(cell)
                     + (' <span class="muted">(mean [95% CI])</span>' if cell != MISSING and not is_paper(e) else "")))
    flips = view.adversarial[0]
    if flips and curved(result_of(e, flips)) and result_of(e, flips).get("target"):
        fr = view.adversarial_rank.get(e["name"], (None, None))[0]
        rows.append((f"Flips to chance ({flips})", esc(" ".join(flips_parts(entry_flips(result_of(e, flips)))))))
        rows.append(("Rank (adversarial)", esc(f"{fr} of {len(view.adversarial_ranked)}") if fr else MISSING))
    return "<h2>Summary</h2>" + _kv(rows)


def _defense_and_model(e: dict) -> str:
    params = "".join(f"<tr><th>{esc(k)}</th><td><code>{_json(v)}</code></td></tr>"
                     for k, v in e["defense_params"].items())
    rows = [("Spec", f"<code>{esc(e['defense'])}</code>"),
            ("Registry name", f"<code>{esc(e.get('defense_name') or e['defense'].split(':', 1)[0])}</code>"),
            ("Parameters", f'<table class="kv">{params}</table>' if params else MISSING),
            ("Bits per weight", esc(e["bits"]))]
    if e.get("memory_overhead"):
        rows.append(("Memory overhead", esc(f"{_pct(e['memory_overhead'])}% check bits per data bit")))
    user = e.get("model_source") == "user"
    source = "the submitter's own weights (the defense names only the storage format)" if user else \
        ("trained by this benchmark with the defense's recipe" if not is_paper(e) else "the paper's model")
    return "<h2>Defense</h2>" + _kv(rows) + "<h2>Model</h2>" + _kv([
        ("Architecture", esc(e["model"])), ("Options", f"<code>{_json(e['model_options'])}</code>"),
        ("Parameters in memory", esc(f"{e['n_params']:,}") if e["n_params"] is not None else MISSING),
        ("Weights", esc(source))])


def _models(e: dict, entries_path: str) -> str:
    """Every trained model: its training seed, clean error and checkpoint (SHA-256 and path); none for a row
    copied from a paper."""
    if is_paper(e):
        return ""
    seeds = e["train_seeds"]
    pmc = e.get("per_model_clean_err")
    cks = {c["train_seed"]: c for c in e.get("checkpoints") or []}
    rows = []
    for m, seed in enumerate(seeds):
        ck = cks.get(seed)
        clean = _pct(pmc[m]) if pmc is not None else (_pct(e["clean_err"]) if len(seeds) == 1 else MISSING)
        if ck is not None:
            repo = posixpath.normpath(posixpath.join(entries_path, e["suite"], ck["path"]))
            digest = f"<code>{esc(ck['sha256'])}</code>"
            where = f'<code>{esc(ck["path"])}</code> <span class="muted">= <code>{esc(repo)}</code></span>'
        else:
            digest, where = MISSING, "none named"
        rows.append("<tr>" + f'<td class="num">{esc(MISSING if seed is None else seed)}</td>'
                    + f'<td class="num">{esc(clean)}</td><td>{digest}</td><td class="wrap">{where}</td></tr>')
    note = ("" if cks else '<p class="muted">No checkpoint named: the row cannot be re-evaluated '
            "without training.</p>")
    return ("<h2>Models</h2><p class=\"muted\">The trained models the results were measured on, one per training "
            "seed: clean error in %, the checkpoint's SHA-256 and its path (relative to the entry's folder).</p>"
            '<div class="scroll"><table class="results"><thead><tr><th class="num">Training seed</th>'
            '<th class="num">Clean Err %</th><th>SHA-256</th><th>Checkpoint</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>" + note)


def _protocol_section(view: SuiteView, e: dict) -> str:
    p = e["protocol"]
    ps = e.get("pattern_seeds")
    seeds = f"{ps[0]}..{ps[-1]}" if ps else f"{p['base_seed']}..{p['base_seed'] + p['patterns'] - 1}"
    rows = [("Dataset", esc(p["dataset"])), ("Evaluation images", esc(p["eval_split"] or MISSING)),
            ("Bits (suite)", esc(p["bits"])), ("Rates", esc(", ".join(format_rate(r) for r in p["rates"]))),
            ("Patterns per rate", esc(p["patterns"])), ("Pattern seeds", esc(seeds)),
            ("Training seeds", esc(seed_words(e)))]
    out = "<h2>Protocol</h2>" + _kv(rows)
    s = view.suite
    if not is_paper(e) and e.get("model_source") != "user" and (s.train or s.augment):
        recipe = [(f"train.{k}", f"<code>{_json(v)}</code>") for k, v in s.train.items()]
        recipe += [(f"augment.{k}", f"<code>{_json(v)}</code>") for k, v in s.augment.items()]
        out += ("<h3>Recipe</h3><p class=\"muted\">The suite's training settings (the defense's own parameters "
                "above shape the weights on top of them).</p>" + _kv(recipe))
    return out


def _stat_cells(entry: dict, r: dict, name: str, fmt: str) -> list[str]:
    """mean, 95% CI, model sd, chip sd and the per-model means of one quantity of a result."""
    s = quantity_summary(entry, r, name)
    if s is None:
        return [MISSING] * 5
    ci = s.get("ci95")
    pm = r.get("per_model", {}).get(name)
    per = per_model_text([sum(row) / len(row) for row in pm], fmt) if pm and len(pm) > 1 else MISSING
    return [format_number(fmt, s.get("mean")),
            f"[{format_number(fmt, ci[0])}, {format_number(fmt, ci[1])}]" if ci else MISSING,
            format_number(fmt, s.get("model_sd")), format_number(fmt, s.get("chip_sd")), per]


def _random_section(view: SuiteView, e: dict) -> str:
    rand = sorted((r for r in e["results"] if r["rate"] is not None), key=lambda r: r["rate"])
    if not rand:
        return ""
    svg = entry_rate_plot(view, e)
    fig = f"<figure>{svg}</figure>" if svg else ""
    if is_paper(e):
        rows = [[format_rate(r["rate"]), format_number("pct", (r["summary"].get("rerr") or {}).get("mean")),
                 r.get("note") or ""] for r in rand]
        return ("<h2>Random bit errors</h2><p class=\"muted\">RErr in %, as the paper reports it (means alone: "
                "no per-model values).</p>" + _grid(["p", "RErr %", "note"], rows, [True, True, False]) + fig)
    plug = [f for f in entry_pattern_fields(e) if f.name not in ("rerr", "nonfinite") and f.level == "pattern"]
    nonfinite = any(v for r in rand for row in r.get("per_model", {}).get("nonfinite", []) for v in row)
    decode = any(r.get("decode_ms") is not None for r in rand)
    heads = ["p", "RErr %", "95% CI", "model sd", "chip sd", "per model", "models x chips"]
    heads += ["non-finite"] * nonfinite + [f"{f.title or f.name} [95% CI]" for f in plug]
    heads += ["decode ms"] * decode + ["note"]
    rows = []
    for r in rand:
        cells = [format_rate(r["rate"])] + _stat_cells(e, r, "rerr", "pct")
        cells.append(f"{len(e['train_seeds'])} x {r['n_patterns']}" if r.get("n_patterns") else MISSING)
        if nonfinite:
            nf = r.get("per_model", {}).get("nonfinite")
            cells.append(f"{sum(1 for row in nf for v in row if v)}/{sum(len(row) for row in nf)}" if nf else MISSING)
        for f in plug:
            s = quantity_summary(e, r, f.name)
            cells.append(summary_cell(f, s) if s else MISSING)
        if decode:
            cells.append(format_number("ms", r.get("decode_ms")))
        cells.append(r.get("note") or "")
        rows.append(cells)
    what = "the models and the chips" if len(e["train_seeds"]) > 1 else "the chips"
    out = ("<h2>Random bit errors</h2><p class=\"muted\">RErr in %: mean over the models and chips, its 95% "
           f"confidence interval (a bootstrap over {what}), the spread over models (sd of the per-model means) and "
           "over chips (pooled within-model sd), and each model's mean. Non-finite: patterns with NaN or inf "
           "outputs, of all patterns.</p>"
           + _grid(heads, rows, [h not in ("note",) for h in heads]))
    return out + fig


def _curve_section(view: SuiteView, e: dict, r: dict) -> str:
    n_models = len(e["train_seeds"])
    info = [("Models x trials", esc(f"{n_models} x {r.get('n_patterns', MISSING)}"))]
    if r.get("target") is not None:
        t = r["target"]
        info.append(("Target", esc(f"{t['metric']} >= {_pct(t['value'])}%")))
        info.append(("Flips to target", esc(" ".join(flips_parts(entry_flips(r))))
                     + ' <span class="muted">(median [min, max] over every trial, (reached/trials); > n: not within '
                       "n flips)</span>"))
        per = zip(e["train_seeds"], trial_flips(r))
        info.append(("Per trial", "<br>".join(esc(f"model {MISSING if s is None else s}: {', '.join(cells)}")
                                              for s, cells in per)))
    rerr = summary_cell(RERR, r.get("summary", {}).get("rerr"))
    if rerr != MISSING:
        info.append(("RErr % after the attack", esc(rerr) + ' <span class="muted">(mean [95% CI])</span>'))
    if r.get("detection") is not None:
        info.append(("Detected", esc(f"{_pct(r['detection'])}% of the flipped bits")))
    if r.get("decode_ms") is not None:
        info.append(("Decode", esc(f"{format_number('ms', r['decode_ms'])} ms per trial")))
    metrics = [m for m in ("err", "asr") if m in r["curve"]]
    heads = ["flips"]
    for m in metrics:
        name = "ASR %" if m == "asr" else "Err %"
        heads += [name, "95% CI", "model sd", "trial sd"]
    rows = []
    for i, n in enumerate(r["curve"]["flips"]):
        cells = [str(n)]
        for m in metrics:
            s = view.curve_summary(e, r, m, i)
            cells += [_pct(s["mean"]), f"[{_pct(s['ci95'][0])}, {_pct(s['ci95'][1])}]", _pct(s["model_sd"]),
                      _pct(s["chip_sd"])]
        rows.append(cells)
    return (f"<h3><code>{esc(r['attack'])}</code></h3>" + _kv(info)
            + "<p class=\"muted\">After at most n flips: mean over the models and trials, its 95% CI, the spread "
              "over models and over trials.</p>" + _grid(heads, rows, [True] * len(heads)))


def _adversarial_section(view: SuiteView, e: dict) -> str:
    adv = [r for r in e["results"] if r["rate"] is None]
    if not adv:
        return ""
    parts = ["<h2>Adversarial bit flips</h2>"]
    for r in adv:
        if curved(r):
            parts.append(_curve_section(view, e, r))
        else:
            cell = summary_cell(RERR, r.get("summary", {}).get("rerr"))
            parts.append(f"<h3><code>{esc(r['attack'])}</code></h3>" + _kv(
                [("RErr %", esc(cell))]
                + ([("Note", esc(r["note"]))] if r.get("note") else [])))
    svg = entry_flips_plot(view, e)
    if svg:
        parts.append(f"<figure>{svg}</figure>")
    return "".join(parts)


def _provenance(e: dict, entries_path: str) -> str:
    rows = [("Reported by", esc("a paper (not reproduced here)" if is_paper(e) else "this benchmark")),
            ("Version", esc(e["version"] or MISSING)), ("Git revision", esc(e.get("git_rev") or MISSING)),
            ("Configuration hash", f"<code>{esc(e['config_hash'] or MISSING)}</code>"),
            ("Device", esc(e["device"] or MISSING)), ("Date", esc(e["date"] or MISSING)),
            ("Citation", esc(e["citation"] or MISSING)),
            ("Link", _link(e["link"]) if e.get("link") else MISSING),
            ("Entry file", f"<code>{esc(entries_path.rstrip('/') + '/' + e['suite'] + '/' + e['name'] + '.json')}"
                           "</code>")]
    out = "<h2>Provenance</h2>" + _kv(rows)
    if e.get("notes"):
        out += "<h3>Notes</h3><ol class=\"notes\">" + "".join(f"<li>{esc(' '.join(n.split()))}</li>"
                                                            for n in e["notes"]) + "</ol>"
    return out


def entry_page(view: SuiteView, e: dict, entries_path: str) -> str:
    s = view.suite
    name = esc(e["name"]) + (f" {PAPER_MARK}" if is_paper(e) else "")
    parts = [f"<h1>{name}</h1>",
             f'<p class="lead">Suite <a href="../index.html">{esc(s.name)}</a> · defense <code>{esc(e["defense"])}'
             f"</code> · model {esc(e['model'])} · " + ("the paper's model" if is_paper(e) else
                                                      f"{len(e['train_seeds'])} trained model"
                                                      + ("s" if len(e["train_seeds"]) > 1 else "")) + "</p>",
             _reproduce(view, e, entries_path), _summary(view, e), _defense_and_model(e), _models(e, entries_path),
             _protocol_section(view, e), _random_section(view, e), _adversarial_section(view, e),
             _provenance(e, entries_path)]
    return _page(f"bitbench leaderboard: {e['name']} ({s.name})", "\n".join(p for p in parts if p), root="../../",
                 nav=[("../../index.html", "suites"), ("../index.html", f"suite {s.name}")])
