"""A small SVG line-plot writer for the leaderboard website (no matplotlib): lines with markers, optional ± bands,
dashed lines, reference lines, a linear or log x axis, a legend; hover titles on every point.

The output is a pure function of the arguments: coordinates are written with two decimals, nothing depends on the
clock, the host or a random state, so the same series give the same bytes. Every text (labels, titles) is
XML-escaped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Callable, Sequence

__all__ = ["Series", "RefLine", "line_plot", "PALETTE", "log_ticks", "linear_ticks"]

# Ten distinguishable colours (the Tableau 10 set); series beyond ten cycle through them with a dash pattern.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
_DASHES = ("", "6 3", "2 2", "8 3 2 3")


@dataclass(frozen=True)
class Series:
    """One line: ``points`` (x, y) in data units, drawn in x order; ``band``: (x, lo, hi) triples of a shaded
    interval (e.g. ± std); ``dashed``: a dashed line (rows copied from a paper); ``markers_only``: points without
    a connecting line; ``color``: a CSS colour (default: the palette by position)."""

    label: str
    points: tuple = ()
    band: tuple = ()
    dashed: bool = False
    markers_only: bool = False
    color: str | None = None


@dataclass(frozen=True)
class RefLine:
    """A dotted reference line at ``value`` (x for a vertical, y for a horizontal line) with a short label."""

    value: float
    label: str = ""


def _n(v: float) -> str:
    """A coordinate: two decimals, no '-0.00'."""
    s = f"{v:.2f}"
    return "0.00" if s == "-0.00" else s


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10 * mag


def linear_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if hi <= lo:
        return [lo]
    step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9)
    out, k = [], first
    while k * step <= hi * (1 + 1e-12) + 1e-12:
        out.append(round(k * step, 12))
        k += 1
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis over [lo, hi] (lo > 0): powers of ten, with 2 and 5 times them when the range spans
    fewer than three decades, and 1.5, 2.5 ... when the range lies inside one decade."""
    if lo <= 0 or hi <= 0:
        raise ValueError(f"log axis needs a positive range, got [{lo}, {hi}]")
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = math.log10(hi) - math.log10(lo)
    mults = (1,) if decades >= 3 else (1, 2, 5) if decades >= 0.9 else (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)
    out = []
    for e in range(e0, e1 + 1):
        for m in mults:
            v = float(f"{m}e{e}")
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append(v)
    return out


def line_plot(series: Sequence[Series], *, title: str, x_label: str, y_label: str, x_log: bool = False,
              x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
              x_format: Callable[[float], str] = lambda v: f"{v:g}",
              y_format: Callable[[float], str] = lambda v: f"{v:g}",
              vlines: Sequence[RefLine] = (), hlines: Sequence[RefLine] = (), width: int = 760,
              height: int = 380, legend_width: int = 230, label_chars: int = 34, plot_id: str = "plot") -> str:
    """An ``<svg>`` element (a string, no XML declaration: it is meant to be inlined in HTML).

    ``x_range``/``y_range``: the axis limits (default: the data's, padded); on a log axis, points with x <= 0 are
    left out. ``x_format``/``y_format`` write tick labels and hover values. Legend labels longer than
    ``label_chars`` are shortened with an ellipsis (the full label stays in the hover title). ``plot_id``: prefix
    of the element ids (unique per page when several plots are inlined in one page)."""
    series = list(series)
    left, right, top, bottom = 58, legend_width + 16, 34, 48
    legend_rows = len(series)
    height = max(height, top + 20 + 17 * legend_rows + 10)
    pw, ph = width - left - right, height - top - bottom

    def usable(x):
        return math.isfinite(x) and (x > 0 or not x_log)

    xs = [x for s in series for x, _ in s.points if usable(x)] + [x for s in series for x, _, _ in s.band
                                                                   if usable(x)]
    ys = [y for s in series for _, y in s.points if math.isfinite(y)]
    ys += [v for s in series for _, lo, hi in s.band for v in (lo, hi) if math.isfinite(v)]
    if x_range is None:
        if xs:
            lo, hi = min(xs), max(xs)
            if x_log:
                lo, hi = (lo / 1.3, hi * 1.3) if lo != hi else (lo / 2, hi * 2)
            else:
                pad = (hi - lo) * 0.05 or 1.0
                lo, hi = lo - pad, hi + pad
        else:
            lo, hi = (1.0, 10.0) if x_log else (0.0, 1.0)
        x_range = (lo, hi)
    if y_range is None:
        if ys:
            lo, hi = min(ys), max(ys)
            pad = (hi - lo) * 0.05 or 1.0
            y_range = (lo - pad, hi + pad)
        else:
            y_range = (0.0, 1.0)
    x0, x1 = x_range
    y0, y1 = y_range
    if x_log:
        lx0, lx1 = math.log10(x0), math.log10(x1)

        def px(x):
            return left + (math.log10(x) - lx0) / (lx1 - lx0) * pw
    else:
        def px(x):
            return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        y = min(max(y, y0), y1)  # clipped to the frame
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" font-family="system-ui, sans-serif" font-size="11">',
           f"<title>{escape(title)}</title>",
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{_n(left + pw / 2)}" y="18" text-anchor="middle" font-size="13" font-weight="600">'
           f"{escape(title)}</text>"]
    # grid and ticks
    xt = log_ticks(x0, x1) if x_log else linear_ticks(x0, x1)
    yt = linear_ticks(y0, y1)
    out.append('<g class="grid" stroke="#e3e3e3" stroke-width="1">')
    for v in xt:
        out.append(f'<line x1="{_n(px(v))}" y1="{top}" x2="{_n(px(v))}" y2="{top + ph}"/>')
    for v in yt:
        out.append(f'<line x1="{left}" y1="{_n(py(v))}" x2="{left + pw}" y2="{_n(py(v))}"/>')
    out.append("</g>")
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#555"/>')
    out.append('<g class="ticks" fill="#333">')
    for v in xt:
        out.append(f'<text x="{_n(px(v))}" y="{top + ph + 15}" text-anchor="middle">{escape(x_format(v))}</text>')
    for v in yt:
        out.append(f'<text x="{left - 6}" y="{_n(py(v) + 4)}" text-anchor="end">{escape(y_format(v))}</text>')
    out.append("</g>")
    out.append(f'<text x="{_n(left + pw / 2)}" y="{height - 10}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text transform="translate(14 {_n(top + ph / 2)}) rotate(-90)" text-anchor="middle">'
               f"{escape(y_label)}</text>")
    # reference lines
    for r in vlines:
        if usable(r.value) and x0 <= r.value <= x1:
            x = _n(px(r.value))
            out.append(f'<line class="ref" x1="{x}" y1="{top}" x2="{x}" y2="{top + ph}" stroke="#888" '
                       f'stroke-dasharray="2 3"><title>{escape(r.label)}</title></line>')
            if r.label:
                out.append(f'<text x="{_n(px(r.value) - 3)}" y="{top + 11}" text-anchor="end" fill="#666">'
                           f"{escape(r.label)}</text>")
    for r in hlines:
        if math.isfinite(r.value) and y0 <= r.value <= y1:
            y = _n(py(r.value))
            out.append(f'<line class="ref" x1="{left}" y1="{y}" x2="{left + pw}" y2="{y}" stroke="#888" '
                       f'stroke-dasharray="2 3"><title>{escape(r.label)}</title></line>')
            if r.label:
                out.append(f'<text x="{left + 4}" y="{_n(py(r.value) - 3)}" fill="#666">{escape(r.label)}</text>')
    # series
    clip = escape(f"{plot_id}-frame")
    out.append(f'<clipPath id="{clip}"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/></clipPath>')
    for i, s in enumerate(series):
        color = escape(s.color or PALETTE[i % len(PALETTE)])
        dash = "5 3" if s.dashed else _DASHES[(i // len(PALETTE)) % len(_DASHES)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        pts = sorted((x, y) for x, y in s.points if usable(x) and math.isfinite(y))
        band = sorted((x, lo, hi) for x, lo, hi in s.band if usable(x) and math.isfinite(lo) and math.isfinite(hi))
        out.append(f'<g class="series" data-series="{i}"><title>{escape(s.label)}</title>')
        if len(band) >= 2:
            poly = [f"{_n(px(x))},{_n(py(hi))}" for x, _, hi in band]
            poly += [f"{_n(px(x))},{_n(py(lo))}" for x, lo, _ in reversed(band)]
            out.append(f'<polygon points="{" ".join(poly)}" fill="{color}" fill-opacity="0.15" stroke="none" '
                       f'clip-path="url(#{clip})"/>')
        elif len(band) == 1:
            x, lo, hi = band[0]
            out.append(f'<line x1="{_n(px(x))}" y1="{_n(py(lo))}" x2="{_n(px(x))}" y2="{_n(py(hi))}" '
                       f'stroke="{color}" stroke-width="1"/>')
        if len(pts) >= 2 and not s.markers_only:
            path = " ".join(f"{_n(px(x))},{_n(py(y))}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"{dash_attr} '
                       f'clip-path="url(#{clip})"/>')
        for x, y in pts:
            out.append(f'<circle cx="{_n(px(x))}" cy="{_n(py(y))}" r="{3.5 if s.markers_only else 2.6}" '
                       f'fill="{color}"><title>{escape(s.label)}: {escape(x_format(x))}, '
                       f"{escape(y_format(y))}</title></circle>")
        out.append("</g>")
    # legend
    lx, ly = left + pw + 14, top + 6
    out.append('<g class="legend">')
    for i, s in enumerate(series):
        color = escape(s.color or PALETTE[i % len(PALETTE)])
        dash = "5 3" if s.dashed else _DASHES[(i // len(PALETTE)) % len(_DASHES)]
        y = ly + 17 * i
        label = s.label if len(s.label) <= label_chars else s.label[: label_chars - 1] + "…"
        if s.markers_only:
            out.append(f'<circle cx="{lx + 11}" cy="{y}" r="3.5" fill="{color}"/>')
        else:
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 22}" y2="{y}" stroke="{color}" stroke-width="2"'
                       f"{dash_attr}/>")
        out.append(f'<text x="{lx + 28}" y="{y + 4}"><title>{escape(s.label)}</title>{escape(label)}</text>')
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)
