"""Vulnerability profiles (benchmark.profile, `python -m benchmark profile`): the cells partition the full chip's
flips, a cell's evaluation equals a direct evaluation with only its flips applied, and the command end to end."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest
import torch
from torch import nn

from bitbench import kernels
from bitbench.attacks import create_attack
from bitbench.configs.errors import UsageError
from bitbench.defenses import QuantizedModel, rquant
from bitbench.defenses.metadata import metadata_region
from bitbench.evaluate import evaluate_attack, predict
from bitbench.profile import layer_groups, module_of, profile_cells

from test_cli import bench


def _model():
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def _qm(m):
    return QuantizedModel.from_module(m, rquant(8))


def _xor(a, b):
    return kernels.to_pattern(a) ^ kernels.to_pattern(b)


def test_layers_are_modules_and_cells_cover_every_bit():
    m = _model()
    qm = _qm(m)
    assert module_of("features.0.weight") == "features.0" and module_of("scale") == "scale"
    assert layer_groups(qm) == [("0", [0, 1]), ("2", [2, 3])]
    cells = profile_cells(create_attack("random_p0.1:patterns=2"), qm)
    assert [(c.region, c.layer, c.bit) for c in cells] == [("weights", L, b) for L in ("0", "2") for b in range(8)]
    assert cells[0].words == 12 * 16 + 16 and cells[8].words == 16 * 4 + 4
    assert cells[0].spec == "random_p0.1:bit=0,layers=0.weight|0.bias,patterns=2"
    # the spec's own selections restrict the grid; MSB-only: one column
    cells = profile_cells(create_attack("random_p0.1:layers=2.*,bit=7|6"), qm)
    assert [(c.layer, c.bit) for c in cells] == [("2", 0 + 6), ("2", 7)]
    assert [c.bit for c in profile_cells(create_attack("random_msb_p0.1"), qm)] == [7, 7]
    # metadata (float32 ranges): 32 bit columns per layer after the weights' 8
    cells = profile_cells(create_attack("random_p0.1:meta=exposed"), qm)
    meta = [c for c in cells if c.region == "metadata"]
    assert len(cells) == 2 * 8 + 2 * 32 and {c.bit for c in meta} == set(range(32))
    assert all("meta=only" in c.spec for c in meta) and not any("meta" in c.spec for c in cells if c.region ==
                                                                 "weights")
    # activations: every stored conv/linear output, int8 words
    cells = profile_cells(create_attack("act_random_p0.01"), qm, m)
    assert {(c.region, c.layer) for c in cells} == {("activations", "0"), ("activations", "2")}
    assert sorted({c.bit for c in cells}) == list(range(8)) and cells[0].spec.startswith("act_random_p0.01:bit=0,")


@pytest.mark.parametrize("bad, why", [("bfa", "random-error attack"), ("random_p0.1:act_p=0.01", "act_p"),
                                      ("random_p0.1:include_buffers=true", "include_buffers")])
def test_unprofilable_attacks_are_refused(bad, why):
    with pytest.raises(UsageError, match=why):
        profile_cells(create_attack(bad), _qm(_model()))


def test_cells_partition_the_full_chip():
    """Per pattern: each cell's flips are exactly the full chip's flips in its layer's words at its bit; the cells'
    flips add up to the full chip's (weights, and the metadata words of meta=exposed)."""
    qm = _qm(_model())
    full_attack = create_attack("random_p0.1:patterns=3,meta=exposed")
    region = metadata_region(qm)
    full = [(p.codes.clone(), full_attack.meta_pattern(region, qm, p.index), p.info)
            for p in full_attack.perturbations(qm)]
    cells = profile_cells(full_attack, qm)
    groups = dict(layer_groups(qm))
    totals = [[0, 0] for _ in full]
    for c in cells:
        a = create_attack(c.spec)
        for k, p in enumerate(a.perturbations(qm)):
            codes, mwords, info = full[k]
            if c.region == "weights":
                want = torch.zeros_like(kernels.to_pattern(qm.codes))
                for t in groups[c.layer]:
                    o, n = qm.offsets[t], qm.lengths[t]
                    want[o:o + n] = _xor(codes, qm.codes)[o:o + n] & (1 << c.bit)
                assert torch.equal(_xor(p.codes, qm.codes), want)
                totals[k][0] += p.info["flips"]
            else:
                assert torch.equal(p.codes, qm.codes)          # meta=only: the data words stay clean
                got = _xor(a.meta_pattern(region, qm, k), region.words)
                want = torch.zeros_like(got)
                for t in groups[c.layer]:
                    s, n = region.segment_range(t)
                    want[s:s + n] = _xor(mwords, region.words)[s:s + n] & (1 << c.bit)
                assert torch.equal(got, want)
                totals[k][1] += p.info["meta_flips"]
    assert totals == [[info["flips"], info["meta_flips"]] for _, _, info in full]
    assert all(t[0] > 0 and t[1] > 0 for t in totals)


def test_a_cell_is_the_direct_evaluation_of_its_flips():
    """A cell's RErr per pattern equals applying only its flips (the full chip's, restricted by hand) and counting
    the inputs wrong clean or perturbed."""
    torch.manual_seed(0)
    m = _model()
    qm = _qm(m)
    x = torch.randn(300, 12)
    qm.load_into(m)
    clean_pred = predict(m, x)
    y = clean_pred.clone()
    y[::7] = (y[::7] + 1) % 4                              # some inputs wrong already when clean
    full = [p.codes.clone() for p in create_attack("random_p0.2:patterns=4").perturbations(qm)]
    groups = dict(layer_groups(qm))
    seen = set()
    for c in profile_cells(create_attack("random_p0.2:patterns=4"), qm):
        ev = evaluate_attack(m, qm, create_attack(c.spec), x, y)
        for k, pat in enumerate(ev.patterns):
            codes = qm.clone_codes()
            for t in groups[c.layer]:
                o, n = qm.offsets[t], qm.lengths[t]
                mask = _xor(full[k], qm.codes)[o:o + n] & (1 << c.bit)
                codes[o:o + n] = kernels.from_pattern(kernels.to_pattern(qm.codes[o:o + n]) ^ mask, codes.dtype)
            qm.load_into(m, codes)
            pred = predict(m, x)
            want = int(((pred != y) | (clean_pred != y)).sum()) / len(y)
            assert pat.rerr == want, (c.spec, k)
            seen.add(round(want, 6))
        qm.load_into(m)
    assert len(seen) > 3, "the cells must differ (some bits matter, others do not)"


def _run(tmp_path, *extra, check=0):
    return bench(["profile", "--defense", "rquant", "--epochs", "1", "--patterns", "1", "--n-eval", "100",
                  "--no-progress", *extra], tmp_path, check=check)


def test_profile_command_end_to_end_and_cached(tmp_path):
    p = _run(tmp_path, "--attack", "random_p0.1", "--out", "prof")
    assert "40 cells, 0 cached" in p.stdout and "weights:" in p.stdout
    lines = p.stdout.splitlines()
    head = next(i for i, s in enumerate(lines) if s.startswith("layer"))
    assert lines[head].split() == ["layer", "words"] + [f"b{b}" for b in range(7, -1, -1)]
    rows = [s.split() for s in lines[head + 2:head + 7]]
    assert [r[0] for r in rows] == ["features.0", "features.4", "classifier.1", "classifier.3", "classifier.5"]
    with open(tmp_path / "prof" / "profile.json") as f:
        prof = json.load(f)
    assert prof["attack"] == "random_p0.1:patterns=1" and prof["patterns"] == 1 and prof["train_seeds"] == [0]
    assert len(prof["cells"]) == 40
    # every cell: its record is an ordinary result record of the restricted spec, and the table shows its RErr
    by = {(c["layer"], c["bit"]): c for c in prof["cells"]}
    for r in rows:
        for b, shown in zip(range(7, -1, -1), r[2:]):
            c = by[(r[0], b)]
            with open(tmp_path / c["records"][0]) as f:
                rec = json.load(f)
            assert rec["attack"] == c["attack"] and rec["patterns"]["seed"] == [100]
            assert f"{100 * rec['patterns']['rerr'][0]:.1f}" == shown
    svg = ET.parse(tmp_path / "prof" / "heatmap.svg").getroot()
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert len(titles) == 40 and "weights classifier.1 bit 7" in titles[16]
    assert (tmp_path / "prof" / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg_bytes = (tmp_path / "prof" / "heatmap.svg").read_bytes()

    # Second run: every cell is reused from its record; the same picture, byte for byte.
    p2 = _run(tmp_path, "--attack", "random_p0.1", "--out", "prof", "--format", "markdown")
    assert "40 cells, 40 cached" in p2.stdout and "training" not in p2.stderr
    assert "| classifier.1 |" in p2.stdout
    # CSV: one table, the region first
    p3 = _run(tmp_path, "--attack", "random_p0.1", "--out", "prof", "--format", "csv")
    csv = p3.stdout.splitlines()
    assert csv[0] == "region,layer,words," + ",".join(f"b{b}" for b in range(7, -1, -1)) and len(csv) == 6
    assert csv[3].startswith("weights,classifier.1,48120,")
    assert (tmp_path / "prof" / "heatmap.svg").read_bytes() == svg_bytes


@pytest.mark.parametrize("args, message", [
    (["--attack", "bfa"], "random-error attack"),
    (["--attack", "random_p0.1:act_p=0.01"], "act_p"),
    (["--attack", "random_p2"], "fraction in [0, 1]"),
    (["--attack", "random_p0.1:bit=9"], "bit=9"),
    (["--attack", "random_p0.1:layers=nothing*"], "nothing"),
    (["--plot", "jpeg"], "invalid choice"),
])
def test_profile_bad_options_exit_2(tmp_path, args, message):
    p = _run(tmp_path, *args, check=2)
    assert message in p.stderr and "Traceback" not in p.stderr
    assert "training" not in p.stderr, "bad options are refused before any training"
