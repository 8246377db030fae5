"""One PNG per suite: RErr (%) against the bit error rate (log x axis), one line per entry.

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
from .generate import plot_paths, ranked_entries

__all__ = ["plot_suite", "write_plots", "require_matplotlib"]


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
            pts = sorted((r["rate"], 100 * r["rerr"]["mean"]) for r in e["results"]
                         if r["rate"] and r["rerr"] is not None)  # log axis: rate > 0
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
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return path


def write_plots(entries_dir=None, plots_dir: str | os.PathLike = "leaderboard/plots",
                suites: Iterable[str] | None = None, *, configs_dir=None) -> dict:
    """``{suite: png path}`` for every suite with entries (``<plots_dir>/<suite>.png``)."""
    require_matplotlib()
    data = load_entries(entries_dir if entries_dir is not None else DEFAULT_ENTRIES_DIR, suites,
                        configs_dir=configs_dir)
    return {name: plot_suite(data[name][0], data[name][1], path) for name, path in plot_paths(data, plots_dir).items()}

