"""perf harness/attacks --model: the scale rows on a language model (a tiny GPT at random initialization) -- the
parameter count, memory fields and ratios are there, the protected loops decode, and BFA on next-token logits
chooses the same flips as the straightforward per-layer search."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bitbench.models import build_model
from bitbench.perf import perf_attacks, perf_harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")
SPEC = "gpt:width=16,depth=1,heads=2,context=128"


def test_harness_rows_of_a_language_model():
    rows = perf_harness("cpu", patterns=2, p=0.001, model_spec=SPEC, n_eval=2)
    n = sum(q.numel() for q in build_model(SPEC, num_classes=256, seed=0).parameters())
    assert [r["loop"] for r in rows] == ["floor (clean inference)", "bitbench rquant",
                                         "bitbench + secded (72, 64) ECC", "bitbench + radar (group 16 checksums)"]
    for r in rows:
        assert r["params"] == n == r["words"] and r["n_eval"] == 2 and r["dataset"] == "text"
        assert r["fp32_mb"] == pytest.approx(4 * n / 2**20) and r["peak_rss_mb"] > 0 and r["cpu_ms_per_pattern"] > 0
    # the peak is the process's lifetime maximum: measurable only where this measurement raised it
    ratio = rows[0]["memory_ratio"]
    assert (ratio is None) == (rows[0]["peak_rss_mb"] <= rows[0]["rss_at_start_mb"]) and (ratio is None or ratio > 0)
    assert rows[0]["act_mb"] >= 0
    assert rows[2]["decode_ms"] > 0 and rows[2]["memory_overhead"] == 0.125 and rows[2]["cpu_ratio_to_unprotected"] > 0


def test_bfa_on_next_token_logits_matches_the_per_layer_search():
    rows = perf_attacks("cpu", flips=2, model_spec=SPEC, batch=2)
    assert rows[0]["same_flips"] is True and rows[0]["flips"] == 2 and rows[0]["batch"] == 2
    assert rows[0]["cpu_ms_per_flip_per_mparam"] > 0 and rows[0]["params"] == rows[0]["words"]
    only = perf_attacks("cpu", flips=1, model_spec=SPEC, batch=2, baseline=False)
    assert len(only) == 1 and "same_flips" not in only[0]


def test_model_option_is_refused_where_it_does_not_apply(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "benchmark", "perf", "kernels", "--model", "gpt"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "--model applies to 'harness' and 'attacks' only" in p.stderr, p.stderr
