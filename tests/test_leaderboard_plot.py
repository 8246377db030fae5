"""Leaderboard plots (RErr against bit error rate, PNG); need the optional matplotlib."""

from __future__ import annotations

import pytest

try:  # shared hand-made entries (tests/ as a plain folder or as a package)
    from test_leaderboard import TOY_SUITE, make_entry, put
except ImportError:  # pragma: no cover
    from .test_leaderboard import TOY_SUITE, make_entry, put

pytest.importorskip("matplotlib", reason="plots need the optional matplotlib (pip install 'bitbench[plot]')")

from bitbench.leaderboard import cli as lcli  # noqa: E402
from bitbench.leaderboard.plot import write_plots  # noqa: E402


@pytest.fixture
def setup(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "toy.toml").write_text(TOY_SUITE)
    entries = tmp_path / "entries"
    put(entries, make_entry("a", rerrs=(0.05, 0.2, 0.5)))
    put(entries, make_entry("b", rerrs=(0.05, 0.1, 0.4)))
    put(entries, make_entry("p", rerrs=(0.04, None, None), paper=True))
    return configs, entries


def test_plot_png_is_deterministic(tmp_path, setup):
    configs, entries = setup
    out = write_plots(entries, tmp_path / "plots", configs_dir=configs)
    png = out["toy"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Software" not in png and b"matplotlib version" not in png
    out2 = write_plots(entries, tmp_path / "plots2", configs_dir=configs)
    assert out2["toy"].read_bytes() == png
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["toy.png"]


def test_cli_plots_are_linked(tmp_path, setup):
    configs, entries = setup
    md = tmp_path / "LB.md"
    assert lcli.main(["leaderboard", "--entries", str(entries), "--configs", str(configs), "--out", str(md),
                      "--plots", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "toy.png").is_file()
    assert "![RErr against bit error rate, suite toy](plots/toy.png)" in md.read_text()
