"""AutoAugment's CIFAR-10 policy in plain torch (benchmark/data/augment.py): each operation on small images whose
results are worked out by hand in the comments (pixel levels 0..255, results rounded half to even)."""
from __future__ import annotations

import pytest
import torch

from bitbench.data.augment import AA_OPS, CIFAR10_POLICY, MAGNITUDES, SIGNED, autoaugment

F0 = torch.zeros(1)  # fill level for one channel


def img(rows, channels=1):
    t = torch.tensor(rows, dtype=torch.float32)
    return t.expand(channels, *t.shape).reshape(1, channels, *t.shape).clone()


def op(name, x, m, fill=F0):
    return AA_OPS[name](x, torch.tensor([float(m)]), fill)


def test_invert_posterize_solarize():
    assert op("invert", img([[0, 255], [10, 100]]), 0)[0, 0].tolist() == [[255, 0], [245, 155]]
    # posterize to 4 bits keeps the top 4 bits: 255 -> 240, 17 -> 16, 15 -> 0
    assert op("posterize", img([[255, 17, 15]]), 4)[0, 0].tolist() == [[240, 16, 0]]
    # solarize at 128: levels >= 128 inverted
    assert op("solarize", img([[127, 128, 200]]), 128)[0, 0].tolist() == [[127, 127, 55]]


def test_enhancements():
    # brightness: factor 1 + m; 1.5 * [10, 200] = [15, 300 -> 255]; 0.5 * [10, 201] = [5, 100.5 -> 100 (even)]
    assert op("brightness", img([[10, 200]]), 0.5)[0, 0].tolist() == [[15, 255]]
    assert op("brightness", img([[10, 201]]), -0.5)[0, 0].tolist() == [[5, 100]]
    # color on (R, G, B) = (100, 50, 0): gray = round(29.9 + 29.35) = 59; factor 0.5: 79.5 -> 80, 54.5 -> 54,
    # 29.5 -> 30; one channel: unchanged
    rgb = torch.tensor([100.0, 50.0, 0.0]).view(1, 3, 1, 1)
    assert op("color", rgb, -0.5, torch.zeros(3)).flatten().tolist() == [80, 54, 30]
    assert op("color", img([[7, 9]]), 0.7)[0, 0].tolist() == [[7, 9]]
    # contrast: blend with the mean gray level (100); factor 1.5: -50 -> 0, 100, 250, 100
    assert op("contrast", img([[0, 100], [200, 100]]), 0.5)[0, 0].tolist() == [[0, 100], [250, 100]]
    # sharpness: blend with the image smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13 inside the border
    x = img([[0, 0, 0], [0, 130, 0], [0, 0, 0]])  # smoothed centre 5 * 130 / 13 = 50
    assert op("sharpness", x, -0.5)[0, 0].tolist() == [[0, 0, 0], [0, 90, 0], [0, 0, 0]]  # 50 + 0.5 * 80
    assert op("sharpness", x, 0.5)[0, 0, 1, 1].item() == 170  # 50 + 1.5 * 80
    y = img([[26, 13, 13], [13, 13, 13], [13, 13, 13]])  # smoothed centre (7 * 13 + 26 + 5 * 13) / 13 = 14
    assert op("sharpness", y, 1.0)[0, 0].tolist() == [[26, 13, 13], [13, 12, 13], [13, 13, 13]]  # 14 + 2 * -1


def test_autocontrast_and_equalize():
    # autocontrast: (u - 50) * 255 / 100: 0, 127.5 -> 128, 255; a constant channel is left alone
    x = torch.tensor([[[[50.0, 100.0, 150.0]], [[9.0, 9.0, 9.0]]]])
    assert op("autocontrast", x, 0, torch.zeros(2))[0].tolist() == [[[0, 128, 255]], [[9, 9, 9]]]
    # equalize: levels 0 (300 px), 10 (300 px), 20 (100 px): step = (700 - 100) // 255 = 2; lut[i] =
    # (1 + count below i) // 2: lut[0] = 0, lut[10] = 301 // 2 = 150, lut[20] = 601 // 2 = 300 -> 255
    e = img([[0.0] * 300 + [10.0] * 300 + [20.0] * 100])
    out = op("equalize", e, 0)[0, 0, 0]
    assert out[:300].unique().tolist() == [0] and out[300:600].unique().tolist() == [150] \
        and out[600:].unique().tolist() == [255]
    # too few pixels for a step: unchanged
    assert op("equalize", img([[0, 0], [128, 255]]), 0)[0, 0].tolist() == [[0, 0], [128, 255]]


def test_geometric_operations_nearest_with_fill():
    x = img([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    f = torch.tensor([50.0])
    # rotation counter-clockwise by 90 degrees, and clockwise
    assert op("rotate", x, 90)[0, 0].tolist() == [[3, 6, 9], [2, 5, 8], [1, 4, 7]]
    assert op("rotate", x, -90)[0, 0].tolist() == [[7, 4, 1], [8, 5, 2], [9, 6, 3]]
    # translation: the content moves right / down by the magnitude, the uncovered pixels take the fill
    assert op("translate_x", x, 1, f)[0, 0].tolist() == [[50, 1, 2], [50, 4, 5], [50, 7, 8]]
    assert op("translate_x", x, -1, f)[0, 0].tolist() == [[2, 3, 50], [5, 6, 50], [8, 9, 50]]
    assert op("translate_y", x, 1, f)[0, 0].tolist() == [[50, 50, 50], [1, 2, 3], [4, 5, 6]]
    # shear about the centre: source x = x + m y (rows above the centre shift right), source y = y + m x
    assert op("shear_x", x, 1, f)[0, 0].tolist() == [[50, 1, 2], [4, 5, 6], [8, 9, 50]]
    assert op("shear_y", x, 1, f)[0, 0].tolist() == [[50, 2, 6], [1, 5, 9], [4, 8, 50]]
    # per-channel fill
    rgb = x.expand(1, 3, 3, 3).clone()
    out = op("translate_x", rgb, 1, torch.tensor([10.0, 20.0, 30.0]))
    assert out[0, :, 0, 0].tolist() == [10, 20, 30]


def test_policy_table_and_magnitudes():
    assert len(CIFAR10_POLICY) == 25 and all(len(sp) == 2 for sp in CIFAR10_POLICY)
    names = {o[0] for sp in CIFAR10_POLICY for o in sp}
    assert names == set(AA_OPS) - {"shear_x"} and set(AA_OPS) == set(MAGNITUDES)
    assert all(0 <= o[1] <= 1 and 0 <= o[2] <= 9 for sp in CIFAR10_POLICY for o in sp)
    assert CIFAR10_POLICY[0] == (("invert", 0.1, 7), ("contrast", 0.2, 6))
    assert [MAGNITUDES["posterize"](k, 32) for k in range(10)] == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert MAGNITUDES["rotate"](9, 32) == 30 and MAGNITUDES["shear_y"](9, 32) == pytest.approx(0.3)
    assert MAGNITUDES["translate_x"](9, 32) == pytest.approx(150 / 331 * 32)
    assert MAGNITUDES["solarize"](0, 32) == 256 and MAGNITUDES["solarize"](9, 32) == 0
    assert {"rotate", "color", "translate_y"} <= SIGNED and "solarize" not in SIGNED


def test_autoaugment_batch_is_deterministic_and_leaves_the_global_rng():
    x = torch.rand(64, 3, 16, 16)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    state = torch.get_rng_state()
    a, b = autoaugment(x, g(1), fill=(0.5, 0.4, 0.3)), autoaugment(x, g(1), fill=(0.5, 0.4, 0.3))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b) and not torch.equal(a, autoaugment(x, g(2), fill=0.5))
    assert a.shape == x.shape and a.dtype == x.dtype and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal((a * 255).round(), a * 255) or torch.allclose((a * 255).round(), a * 255, atol=1e-4)
    changed = (a != (x * 255).round() / 255).flatten(1).any(1)
    assert 0.3 < float(changed.float().mean()) < 1.0  # most images get at least one operation, not all
