"""The website's plots (inline SVG, :mod:`.svg`): per suite, RErr against the bit error rate (one line per entry)
and test error against flipped bits under the suite's BFA attack (mean with its 95% CI band); per entry, the same
two curves of that entry with their 95% CI bands. Values are read through :mod:`.site_values`; y in percent."""

from __future__ import annotations

from typing import Iterable

from bitbench.configs.suite import format_rate

from .ranking import result_of
from .site_values import PAPER_MARK, SuiteView, curved, is_paper
from .svg import RefLine, Series, line_plot

__all__ = ["random_plot", "flips_plot", "entry_rate_plot", "entry_flips_plot"]


def _pct_axis(values: Iterable[float]) -> tuple[float, float]:
    top = max(values, default=1.0)
    return 0.0, min(100.0, max(1.0, top * 1.08))


def _x_range(view: SuiteView):
    positive = [r for r in view.suite.rates if r > 0]
    return (min(positive) / 1.3, max(positive) * 1.3) if positive else None


def _rate_points(e: dict) -> tuple[tuple, tuple]:
    """(rate, mean RErr %) and (rate, CI low %, CI high %) of an entry's random results (rate > 0: log axis)."""
    pts, band = [], []
    for r in sorted((r for r in e["results"] if r["rate"]), key=lambda r: r["rate"]):
        s = r.get("summary", {}).get("rerr")
        if s is None or s.get("mean") is None:
            continue
        pts.append((r["rate"], 100 * s["mean"]))
        if s.get("ci95"):
            band.append((r["rate"], 100 * s["ci95"][0], 100 * s["ci95"][1]))
    return tuple(pts), tuple(band)


def random_plot(view: SuiteView, plot_id: str) -> str | None:
    """Mean RErr against the rate, one line per entry in rank order (paper rows dashed)."""
    series = []
    for _, e in view.random_ranked:
        pts, _ = _rate_points(e)
        if pts:
            series.append(Series(e["name"] + (f" {PAPER_MARK}" if is_paper(e) else ""), pts, dashed=is_paper(e),
                                 color=view.colors[e["name"]]))
    if not series:
        return None
    h = view.suite.headline_rate
    return line_plot(series, title=f"RErr against the bit error rate, suite {view.suite.name}",
                     x_label="bit error rate p (log scale)", y_label="RErr (%), mean over models and chips",
                     x_log=True, x_range=_x_range(view), y_range=_pct_axis(y for s in series for _, y in s.points),
                     x_format=format_rate, vlines=[RefLine(h, f"headline p = {format_rate(h)}")] if h else [],
                     plot_id=plot_id)


def curve_series(view: SuiteView, e: dict, attack: str, color: str | None, label: str) -> Series | None:
    """Test error against flips of one attack's curve: mean over models and trials, 95% CI band."""
    r = result_of(e, attack)
    if not curved(r) or "err" not in r["curve"]:
        return None
    pts, band = [], []
    for i, n in enumerate(r["curve"]["flips"]):
        s = view.curve_summary(e, r, "err", i)
        pts.append((n, 100 * s["mean"]))
        band.append((n, 100 * s["ci95"][0], 100 * s["ci95"][1]))
    return Series(label, tuple(pts), tuple(band), color=color)


def _targets(results) -> list[float]:
    return sorted({100 * r["target"]["value"] for r in results if r is not None and r.get("target")
                   and r["target"]["metric"] == "err"})


def flips_plot(view: SuiteView, plot_id: str) -> str | None:
    """Test error under the suite's BFA attack against the flipped bits, one line per entry (flips-rank order)."""
    attack = view.adversarial[0]
    if attack is None:
        return None
    series = [s for _, _, e in view.adversarial_ranked
              for s in [curve_series(view, e, attack, view.colors.get(e["name"]), e["name"])] if s is not None]
    if not series:
        return None
    targets = _targets(result_of(e, attack) for e in view.entries)
    return line_plot(series, title=f"Test error under {attack}, suite {view.suite.name} (mean, 95% CI band)",
                     x_label=f"bits flipped by {attack} (log scale)", y_label="test error (%)", x_log=True,
                     y_range=(0.0, 100.0), hlines=[RefLine(t, f"chance {t:.2f}%") for t in targets],
                     plot_id=plot_id)


def entry_rate_plot(view: SuiteView, e: dict, plot_id: str = "plot-rate") -> str | None:
    """The entry's RErr against the rate with its 95% CI band and its clean error as a reference line."""
    pts, band = _rate_points(e)
    if not pts:
        return None
    clean = [RefLine(100 * e["clean_err"], "clean error")] if e["clean_err"] is not None else []
    label = e["name"] + (" (mean)" if is_paper(e) else " (mean, 95% CI band)")
    return line_plot([Series(label, pts, band, dashed=is_paper(e), color=view.colors.get(e["name"]))],
                     title=f"RErr against the bit error rate: {e['name']}", x_label="bit error rate p (log scale)",
                     y_label="RErr (%)", x_log=True, x_range=_x_range(view),
                     y_range=_pct_axis([y for _, _, y in band] + [y for _, y in pts]), x_format=format_rate,
                     hlines=clean, plot_id=plot_id)


def entry_flips_plot(view: SuiteView, e: dict, plot_id: str = "plot-flips") -> str | None:
    """The entry's test error against flipped bits: each attack with a multi-point curve (mean, 95% CI band), and
    the budget attacks' RErr as points at their budget."""
    series = []
    for r in e["results"]:
        if r["rate"] is None and curved(r) and len(r["curve"]["flips"]) > 1:
            s = curve_series(view, e, r["attack"], None, f"{r['attack']} (mean, 95% CI band)")
            if s is not None:
                series.append(s)
    budget = tuple(sorted((r["flips"], 100 * r["summary"]["rerr"]["mean"]) for r in e["results"]
                          if r["rate"] is None and r.get("target") is None and r.get("flips")
                          and r.get("summary", {}).get("rerr")))
    if budget:
        series.append(Series("budgeted attack (RErr at its budget)", budget, markers_only=True))
    if not series:
        return None
    targets = _targets(e["results"])
    return line_plot(series, title=f"Test error against flipped bits: {e['name']}",
                     x_label="flipped bits (log scale)", y_label="test error (%)", x_log=True,
                     y_range=(0.0, 100.0), hlines=[RefLine(t, f"target {t:.2f}%") for t in targets],
                     plot_id=plot_id)
