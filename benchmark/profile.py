"""Vulnerability profile: the robust error when only one layer and one bit position of one memory region take
errors (docs/vulnerability.md).

A profile of a random-error attack (``random_p{p}``, ``random_msb_p{p}``, ``act_random_p{p}``, ...) at rate p is a
grid of *cells*, one per (region, layer, bit position). A cell is the same attack restricted by the selection
parameters that every random-error spec already has (:mod:`bitbench.attacks.selection`):

* ``weights``: the data words of the layer's tensors, bit b: ``layers=<its tensors>,bit=b`` (``meta=protected``);
* ``metadata`` (a spec with ``meta=exposed`` or ``meta=only``): the float32 range words of the layer's segments:
  ``meta=only,layers=<its tensors>,bit=b``;
* ``activations`` (``act_random_*``): the stored output of one module: ``faulty=<module>,bit=b``.

A *layer* of the weight and metadata regions is a module: the memory's tensors grouped by the name before their
last dot (``features.0.weight`` and ``features.0.bias`` are layer ``features.0``). Every cell keeps the attack's
rate, patterns and seeds, so its flips are exactly the full chip's flips that fall into the cell (the same Philox
numbers at the same global indices): the cells of a region partition the region's flips. Each cell is an ordinary
result record (cached and reused by its configuration hash like any other, :mod:`.records`); the profile reads the
records' RErr (mean over models and patterns, in percent).

Check words of a protected memory, float buffers and combined weight+activation patterns (``act_p``) are not
profiled (a restricted pattern leaves check words as stored).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from bitbench.attacks.activations import ActivationMemory
from bitbench.attacks.selection import matching_tensors
from bitbench.configs.cells import Cell
from bitbench.configs.errors import UsageError
from bitbench.configs.registries import ATTACKS
from bitbench.configs.spec import format_spec
from bitbench.defenses.metadata import metadata_region

__all__ = ["PROFILE_PATTERNS", "PROFILE_ATTACKS", "ProfileCell", "Profile", "module_of", "layer_groups",
           "profile_cells", "run_profile", "profile_table", "profile_svg", "profile_png", "profile_json"]

#: Patterns (chips) per cell unless ``--patterns`` or the spec says otherwise: the suite's first five chips.
PROFILE_PATTERNS = 5
#: The attacks a profile restricts (random errors with ``layers``/``faulty`` and ``bit`` selections).
PROFILE_ATTACKS = ("random", "random_msb", "act_random", "act_random_msb")
REGIONS = ("weights", "metadata", "activations")


@dataclass
class ProfileCell:
    """One cell: ``region``, ``layer`` (module name), ``bit`` (0 = LSB), the restricted attack ``spec`` and, once
    run, its records (one per model)."""

    region: str
    layer: str
    bit: int
    spec: str
    words: int | None = None
    records: list = field(default_factory=list)

    @property
    def rerr(self) -> float | None:
        """Mean RErr (fraction) over models and patterns."""
        return Cell(self.records).summary("rerr")["mean"] if self.records else None


@dataclass
class Profile:
    """A run profile: the base attack, its cells, and what they were measured on."""

    suite: str
    model: str
    defense: str
    attack: str
    rate: float
    patterns: int
    train_seeds: list
    clean_err: float | None
    cells: list

    def regions(self) -> list[str]:
        return [r for r in REGIONS if any(c.region == r for c in self.cells)]

    def grid(self, region: str) -> tuple[list[str], list[int], dict]:
        """``(layers, bits from MSB to LSB, {(layer, bit): cell})`` of a region."""
        cells = [c for c in self.cells if c.region == region]
        layers = list(dict.fromkeys(c.layer for c in cells))
        bits = sorted({c.bit for c in cells}, reverse=True)
        return layers, bits, {(c.layer, c.bit): c for c in cells}


def module_of(tensor_name: str) -> str:
    """``'features.0.weight'`` -> ``'features.0'`` (a top-level tensor is its own layer)."""
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name


def _literal(name: str, what: str) -> str:
    """An fnmatch pattern that matches exactly ``name`` (``*``, ``?``, ``[`` bracketed); a name that a spec cannot
    hold (``,`` or ``|``) is refused."""
    if "," in name or "|" in name or "=" in name:
        raise UsageError(f"{what} {name!r} holds ',', '|' or '=', which a spec cannot carry: it cannot be profiled")
    return re.sub(r"([*?\[])", r"[\1]", name)


def layer_groups(qm, layers=None) -> list[tuple[str, list[int]]]:
    """``[(module, tensor indices)]`` in memory order: ``qm``'s tensors (those matching ``layers``, fnmatch
    patterns) grouped by :func:`module_of`."""
    out: dict[str, list[int]] = {}
    for t in matching_tensors(qm, layers):
        out.setdefault(module_of(qm.names[t]), []).append(t)
    return list(out.items())


def _bits(width: int, only, msb_only: bool) -> list[int]:
    if msb_only:
        return [width - 1]
    return [b for b in range(width) if only is None or b in only]


def check_profile_attack(attack) -> None:
    """Refuse (:class:`UsageError`) an attack a profile cannot restrict."""
    name = getattr(attack, "registry_name", "")
    if name not in PROFILE_ATTACKS:
        raise UsageError(f"profile restricts random bit errors to one layer and one bit position: give a "
                         f"random-error attack ({', '.join(p + '_p{p}' for p in PROFILE_ATTACKS)}), not "
                         f"{attack.spec!r}")
    if getattr(attack, "act_p", None) is not None:
        raise UsageError(f"{attack.spec}: a combined weight+activation pattern (act_p) is not profiled; profile the "
                         f"weights ({name}_p{attack.p!r}) and the activations (act_random_p{attack.act_p!r}) "
                         "separately")
    if getattr(attack, "include_buffers", False):
        raise UsageError(f"{attack.spec}: float buffers (include_buffers) are not profiled; drop include_buffers")


def _cell_spec(attack, **changes) -> str:
    entry = ATTACKS.entry(attack.registry_name)
    params = dict(attack.params, **changes)
    return format_spec(entry.name, params, entry.params, entry.pattern)


def profile_cells(attack, qm, model=None) -> list[ProfileCell]:
    """The cells of ``attack``'s profile on memory ``qm`` (``model``: the module, for the activation region): every
    region the attack reaches x every layer it reaches x every bit position it may flip (module docstring)."""
    check_profile_attack(attack)
    out = []
    if attack.registry_name.startswith("act_random"):
        if model is None:
            raise ValueError("an activation profile needs model= (the module whose outputs are stored)")
        mods, faulty = ActivationMemory.select(model, attack.layers, attack.faulty)
        fmt = attack.faults.format
        for pos in sorted(faulty):
            name = mods[pos][0]
            for b in _bits(fmt.bits, attack.bit, attack.msb_only):
                out.append(ProfileCell("activations", name, b, _cell_spec(
                    attack, faulty=_literal(name, "module"), bit=str(b))))
        return out
    groups = layer_groups(qm, attack.layers)
    regions = []
    if attack.meta != "only":
        regions.append("weights")
    if attack.meta != "protected" and metadata_region(qm).n_words:
        regions.append("metadata")
    meta = metadata_region(qm) if "metadata" in regions else None
    for region in regions:
        width = qm.bits if region == "weights" else meta.bits
        for module, tensors in groups:
            names = "|".join(_literal(qm.names[t], "tensor") for t in tensors)
            if region == "weights":
                words = sum(qm.lengths[t] for t in tensors)
            else:
                words = sum(meta.segment_range(t)[1] for t in tensors)
                if not words:
                    continue
            for b in _bits(width, attack.bit, attack.msb_only):
                out.append(ProfileCell(region, module, b, _cell_spec(
                    attack, layers=names, bit=str(b), meta="protected" if region == "weights" else "only"),
                    words=words))
    return out


def run_profile(harness, defense: str, attack_spec: str, seeds=None) -> Profile:
    """Run (or reuse) every cell of ``attack_spec``'s profile on ``defense`` for the models of ``seeds`` (default:
    the harness's) and return the :class:`Profile`."""
    seeds = list(harness.seeds() if seeds is None else seeds)
    aspec, attack = harness.canonical_attack(attack_spec)
    check_profile_attack(attack)
    dep = harness.deploy(defense, seeds[0])
    cells = profile_cells(attack, dep.qm, dep.model)
    if not cells:
        raise UsageError(f"{aspec} on {dep.defense.spec}: the profile has no cell (no layer or bit position it "
                         "reaches)")
    harness.log(f"profile of {dep.defense.spec} x {aspec}: {len(cells)} cells x {len(seeds)} model(s) x "
                f"{attack.num_perturbations()} patterns")
    for c in cells:
        c.records = [harness.run_cell(defense, c.spec, seed=s) for s in seeds]
    clean = [r.clean_err for r in cells[0].records]
    return Profile(suite=harness.suite.name, model=harness.model_name, defense=dep.defense.spec, attack=aspec,
                   rate=float(attack.rate), patterns=attack.num_perturbations(), train_seeds=seeds,
                   clean_err=math.fsum(clean) / len(clean), cells=cells)


# -- output ------------------------------------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def profile_table(prof: Profile, region: str):
    """The region's layers x bits table (RErr %, bit columns MSB first) as a DataFrame."""
    import pandas as pd

    layers, bits, grid = prof.grid(region)
    rows = []
    for layer in layers:
        row = {"layer": layer}
        words = next((grid[(layer, b)].words for b in bits if (layer, b) in grid), None)
        if words is not None:
            row["words"] = str(words)
        for b in bits:
            c = grid.get((layer, b))
            row[f"b{b}"] = _pct(c.rerr if c else None)
        rows.append(row)
    return pd.DataFrame(rows)


def profile_json(prof: Profile) -> dict:
    """The profile as JSON values: what it was measured on and every cell (its spec, RErr as a fraction, the
    records' paths)."""
    return {"suite": prof.suite, "model": prof.model, "defense": prof.defense, "attack": prof.attack,
            "rate": prof.rate, "patterns": prof.patterns, "train_seeds": prof.train_seeds,
            "clean_err": prof.clean_err,
            "cells": [{"region": c.region, "layer": c.layer, "bit": c.bit, "attack": c.spec, "words": c.words,
                       "rerr": c.rerr, "cached": all(r.cached for r in c.records),
                       "records": [r.path for r in c.records]} for c in prof.cells]}


def _title(prof: Profile, region: str) -> str:
    return (f"{prof.defense} x {prof.attack}: {region}, only one layer and one bit position take errors "
            f"(RErr %, clean {_pct(prof.clean_err)}%)")


def _color(v: float, lo: float, hi: float) -> str:
    """White at ``lo`` to dark red at ``hi`` (linear in the value)."""
    t = 0.0 if hi <= lo or v is None else min(1.0, max(0.0, (v - lo) / (hi - lo)))
    r = round(255 + t * (165 - 255))
    g = round(255 + t * (15 - 255))
    b = round(255 + t * (21 - 255))
    return f"#{r:02x}{g:02x}{b:02x}"


def _scale(prof: Profile) -> tuple[float, float]:
    vals = [c.rerr for c in prof.cells if c.rerr is not None]
    lo = prof.clean_err if prof.clean_err is not None else min(vals, default=0.0)
    return lo, max(vals + [lo])


def profile_svg(prof: Profile) -> str:
    """A dependency-free SVG heatmap, one panel per region (layers as rows, bits MSB to LSB as columns, colour from
    the clean error (white) to the largest cell (dark red), each cell's RErr % written in it). A pure function of
    the profile: the same numbers give the same bytes."""
    from html import escape

    lo, hi = _scale(prof)
    panels, y, width = [], 10, 0
    for region in prof.regions():
        layers, bits, grid = prof.grid(region)
        cw = 44 if len(bits) <= 16 else 30
        ch, left, top = 24, 12 + 7 * max(len(s) for s in layers), 34
        fs = 10 if cw >= 44 else 8
        w = left + cw * len(bits) + 10
        width = max(width, w, 8 + 6 * len(_title(prof, region)))
        parts = [f'<text x="8" y="{y + 14}" font-size="12" font-weight="bold">{escape(_title(prof, region))}</text>']
        for j, b in enumerate(bits):
            parts.append(f'<text x="{left + cw * j + cw / 2:.1f}" y="{y + top - 6}" font-size="{fs}" '
                         f'text-anchor="middle">b{b}</text>')
        for i, layer in enumerate(layers):
            yy = y + top + ch * i
            parts.append(f'<text x="{left - 6}" y="{yy + ch / 2 + 4:.1f}" font-size="11" text-anchor="end">'
                         f'{escape(layer)}</text>')
            for j, b in enumerate(bits):
                c = grid.get((layer, b))
                v = c.rerr if c else None
                fill = "#eeeeee" if v is None else _color(v, lo, hi)
                ink = "#ffffff" if v is not None and hi > lo and (v - lo) / (hi - lo) > 0.6 else "#000000"
                tip = f"{region} {layer} bit {b}: RErr {_pct(v)}%" + (f" ({c.spec})" if c else "")
                parts.append(f'<rect x="{left + cw * j}" y="{yy}" width="{cw - 1}" height="{ch - 1}" '
                             f'fill="{fill}"><title>{escape(tip)}</title></rect>')
                parts.append(f'<text x="{left + cw * j + cw / 2 - 0.5:.1f}" y="{yy + ch / 2 + 3.5:.1f}" '
                             f'font-size="{fs}" text-anchor="middle" fill="{ink}">{_pct(v)}</text>')
        panels.append("\n".join(parts))
        y += top + ch * len(layers) + 24
    body = "\n".join(panels)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" viewBox="0 0 {width} {y}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="#ffffff"/>\n{body}\n</svg>\n')


def profile_png(prof: Profile, path: str) -> bool:
    """The heatmap as a PNG through matplotlib (the ``test`` extra); False (nothing written) without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from matplotlib.colors import LinearSegmentedColormap

    from bitbench.configs.fileio import atomic_write

    lo, hi = _scale(prof)
    cmap = LinearSegmentedColormap.from_list("rerr", ["#ffffff", "#a50f15"])
    regions = prof.regions()
    sizes = [prof.grid(r) for r in regions]
    fig, axes = plt.subplots(len(regions), 1, squeeze=False,
                             figsize=(max(6.0, 0.55 * max(len(b) for _, b, _ in sizes) + 2.5),
                                      sum(0.45 * len(ls) + 1.3 for ls, _, _ in sizes)),
                             gridspec_kw={"height_ratios": [len(ls) + 2 for ls, _, _ in sizes]})
    for ax, region, (layers, bits, grid) in zip(axes[:, 0], regions, sizes):
        vals = [[(grid[(l, b)].rerr if (l, b) in grid and grid[(l, b)].rerr is not None else float("nan"))
                 for b in bits] for l in layers]
        im = ax.imshow([[100 * v for v in row] for row in vals], cmap=cmap, vmin=100 * lo, vmax=100 * max(hi, lo),
                       aspect="auto")
        ax.set_xticks(range(len(bits)), [f"b{b}" for b in bits], fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=8)
        small = 7 if len(bits) <= 16 else 5
        for i, row in enumerate(vals):
            for j, v in enumerate(row):
                dark = hi > lo and not math.isnan(v) and (v - lo) / (hi - lo) > 0.6
                ax.text(j, i, _pct(None if math.isnan(v) else v), ha="center", va="center", fontsize=small,
                        color="white" if dark else "black")
        ax.set_title(_title(prof, region), fontsize=8)
        fig.colorbar(im, ax=ax, label="RErr %")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, metadata={"Software": None}))
    plt.close(fig)
    return True
