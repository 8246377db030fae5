"""One PNG per suite: RErr (%) against the bit error rate (log x axis), one line per entry; and, where entries
carry adversarial curves, ``<suite>-flips.png``: test error (%) against the number of flipped bits (log x axis),
mean over models and trials with a ± std band, one line per entry.

matplotlib is optional (``pip install 'bitbench[plot]'``); it is imported only here, with the Agg backend, and
the PNG metadata carries no software version or date so the bytes depend only on the entries (and matplotlib).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Iterable

from bitbench.configs.suite import Suite, format_rate

from .entries import DEFAULT_ENTRIES_DIR, load_entries
from .ranking import adversarial_attacks, adversarial_ranked, plot_paths, ranked_entries, result_of

__all__ = ["plot_suite", "plot_flips", "write_plots", "require_matplotlib"]


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib, an optional dependency: pip install 'bitbench[plot]' "
                          "(or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_suite(suite: Suite, entries: list[dict], path: str | os.PathLike) -> Path:
    """Draw the suite's RErr-vs-rate curves (entries in rank order; paper rows dashed) and write a PNG."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for rank, e in ranked_entries(entries, suite):
            pts = sorted((r["rate"], 100 * r["summary"]["rerr"]["mean"]) for r in e["results"]
                         if r["rate"] and r["summary"].get("rerr"))  # log axis: rate > 0
            if not pts:
                continue
            label = e["name"] + (" †" if e["reported_by"] == "paper" else "")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                    linestyle="--" if e["reported_by"] == "paper" else "-", label=label)
        ax.set_xscale("log")
        positive = [r for r in suite.rates if r > 0]
        if positive:  # the suite's whole sweep, so plots of one suite share their axis
            ax.set_xlim(min(positive) / 1.3, max(positive) * 1.3)
        if suite.headline_rate is not None:
            ax.axvline(suite.headline_rate, color="0.6", linewidth=0.8, linestyle=":")
        ax.set_xlabel("bit error rate p (log scale)")
        ax.set_ylabel("RErr (%)")
        ax.set_title(f"suite {suite.name}: robust test error (headline p = "
                     f"{format_rate(suite.headline_rate) if suite.headline_rate else '–'})")
    except BaseException:
        plt.close(fig)
        raise
    return _finish(plt, fig, ax, path)


def _finish(plt, fig, ax, path) -> Path:
    """Grid, legend, the PNG bytes (no software/date metadata), written atomically; the figure is closed."""
    try:
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    return _write_png(buf.getvalue(), path)


def _write_png(data: bytes, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def plot_flips(suite: Suite, entries: list[dict], path: str | os.PathLike) -> Path | None:
    """Draw test error against flipped bits for the suite's BFA results (entries in rank order) and write a PNG;
    None when no entry has such a curve."""
    attack, _, _ = adversarial_attacks(entries, suite)
    if attack is None:
        return None
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for _, _, e in adversarial_ranked(entries, suite):
            r = result_of(e, attack)
            if r is None or r.get("curve") is None:
                continue
            n = r["curve"]["flips"]
            # per flip budget: every model's trials
            vals = [[t[i] for m in r["curve"]["err"] for t in m] for i in range(len(n))]
            mean = [100 * sum(v) / len(v) for v in vals]
            std = [100 * (sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v)) ** 0.5 for v in vals]
            line, = ax.plot(n, mean, marker="o", markersize=3, label=e["name"])
            ax.fill_between(n, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.15, linewidth=0)
            if r["target"] is not None:
                ax.axhline(100 * r["target"]["value"], color="0.6", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_xlabel(f"bits flipped by {attack} (log scale)")
        ax.set_ylabel("test error (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"suite {suite.name}: test error under adversarial bit flips (mean ± std over trials)")
    except BaseException:
        plt.close(fig)
        raise
    return _finish(plt, fig, ax, path)


def write_plots(entries_dir=None, plots_dir: str | os.PathLike = "leaderboard/plots",
                suites: Iterable[str] | None = None, *, configs_dir=None) -> dict:
    """``{suite: png path}`` for every suite with entries (``<plots_dir>/<suite>.png``), plus
    ``{suite + "-flips": <plots_dir>/<suite>-flips.png}`` (keys = file stems) for suites with adversarial curves."""
    require_matplotlib()
    data = load_entries(entries_dir if entries_dir is not None else DEFAULT_ENTRIES_DIR, suites,
                        configs_dir=configs_dir)
    out = {}
    for key, path in plot_paths(data, plots_dir).items():
        name = key if key in data else key[: -len("-flips")]
        suite, entries = data[name]
        out[key] = plot_suite(suite, entries, path) if key == name else plot_flips(suite, entries, path)
    return out

