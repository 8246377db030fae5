"""AutoAugment's CIFAR-10 policy in plain torch (benchmark/data/augment.py): each operation on small images whose
results are worked out by hand in the comments (pixel levels 0..255, results rounded half to even); rotation and
shear against PIL itself (the library the original's AutoAugment runs on; Pillow is in the ``test`` extra)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bitbench.data.augment import AA_OPS, CIFAR10_POLICY, MAGNITUDES, SIGNED, autoaugment, fill_levels

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


def test_geometric_operations_by_hand():
    x = img([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    f = torch.tensor([50.0])
    # rotation counter-clockwise by 90 degrees, and clockwise (PIL transposes a square image)
    assert op("rotate", x, 90)[0, 0].tolist() == [[3, 6, 9], [2, 5, 8], [1, 4, 7]]
    assert op("rotate", x, -90)[0, 0].tolist() == [[7, 4, 1], [8, 5, 2], [9, 6, 3]]
    # 45 degrees on 6 x 6: the corners have no source pixel and are grey (128) whatever the fill
    r45 = op("rotate", img([list(range(6 * r + 1, 6 * r + 7)) for r in range(6)]), 45, f)[0, 0]
    assert r45[0, 0] == r45[0, 5] == r45[5, 0] == r45[5, 5] == 128 and r45[0, 1] == 4 and r45[2, 2] == 16
    # translation: the content moves right / down by the magnitude, the uncovered pixels take the fill
    assert op("translate_x", x, 1, f)[0, 0].tolist() == [[50, 1, 2], [50, 4, 5], [50, 7, 8]]
    assert op("translate_x", x, -1, f)[0, 0].tolist() == [[2, 3, 50], [5, 6, 50], [8, 9, 50]]
    assert op("translate_y", x, 1, f)[0, 0].tolist() == [[50, 50, 50], [1, 2, 3], [4, 5, 6]]
    # shear about the top-left corner (PIL: output pixel centre (x + .5, y + .5) reads (x + .5 + m (y + .5), y + .5);
    # a read at or beyond the right edge (4) takes the fill). m = 1 on the ramp 10, 20, 30, 40: row 0 reads x + 1,
    # i.e. pixel x + 0.5 between pixels x and x + 1 (d = 1/2): the cubic p1 + d (p2 + d (p3 + d p4)) of the clamped
    # neighbours gives x = 0: (10, 10, 20, 30) -> 13.75 -> 13 (truncated), x = 1: (10, 20, 30, 40) -> 25,
    # x = 2: (20, 30, 40, 40) -> 36.25 -> 36, x = 3: outside -> 50; rows 1 and 2 read one and two pixels further.
    ramp = img([[10, 20, 30, 40]] * 3)
    assert op("shear_x", ramp, 1, f)[0, 0].tolist() == [[13, 25, 36, 50], [25, 36, 50, 50], [36, 50, 50, 50]]
    assert op("shear_x", ramp, 0, f)[0, 0].tolist() == ramp[0, 0].tolist()
    # shear_y moves column x down by m (x + 0.5); a constant image stays constant where a source exists
    const = img([[77] * 4] * 4)
    sy = op("shear_y", const, 0.5, f)[0, 0]
    assert set(sy[:, 0].tolist()) <= {77} and set(sy.flatten().tolist()) == {77, 50}
    # per-channel fill
    rgb = x.expand(1, 3, 3, 3).clone()
    out = op("translate_x", rgb, 1, torch.tensor([10.0, 20.0, 30.0]))
    assert out[0, :, 0, 0].tolist() == [10, 20, 30]


def _pil_rotate(arr, degrees):
    """The original's rotation: an RGBA copy rotated by PIL (nearest), composited onto grey 128."""
    from PIL import Image

    im = Image.fromarray(arr)
    rot = im.convert("RGBA").rotate(degrees)
    return np.asarray(Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(im.mode))


def _pil_shear(arr, m, axis, fill):
    from PIL import Image

    im = Image.fromarray(arr)
    data = (1, m, 0, 0, 1, 0) if axis == "x" else (1, 0, 0, m, 1, 0)
    return np.asarray(im.transform(im.size, Image.AFFINE, data, Image.BICUBIC, fillcolor=fill))


def _images(rng, n):
    """Random 8-bit images (RGB and gray, square and not, noise and blocks: flat areas hit exact values)."""
    shapes = [(32, 32, 3), (28, 28, 1), (17, 23, 3), (5, 5, 1), (32, 20, 3), (32, 32, 1)]
    for t in range(n):
        h, w, c = shapes[t % len(shapes)]
        if t % 3 == 0:
            blocks = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, c), dtype=np.uint8)
            arr = np.ascontiguousarray(np.repeat(np.repeat(blocks, 4, 0), 4, 1)[:h, :w])
        else:
            arr = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
        yield arr if c == 3 else arr[:, :, 0]


def _ours(name, arr, m, fill):
    u = torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1)).permute(2, 0, 1)[None].float()
    f = torch.tensor(fill if isinstance(fill, tuple) else (fill,), dtype=torch.float32)
    out = AA_OPS[name](u, torch.tensor([m], dtype=torch.float64), f)[0].permute(1, 2, 0).numpy()
    return out if arr.ndim == 3 else out[:, :, 0]


def test_rotate_and_shear_equal_pil():
    """Rotation (nearest, 16.16 fixed point, grey corners, no random sign) and shear (bicubic affine about the
    top-left corner, fill colour) give PIL's pixels exactly: 240 random images, the policy's magnitudes (rotate
    6.67 degrees, shear 0.233 / 0.267 with both signs) and others (multiples of 90 degrees, 0, 360, random)."""
    pytest.importorskip("PIL", reason="Pillow (in the test extra) is the reference for rotate and shear")
    rng = np.random.default_rng(0)
    policy_rotate = MAGNITUDES["rotate"](2, 32)
    policy_shear = [MAGNITUDES["shear_y"](k, 32) for k in (7, 8)]
    checked = 0
    for t, arr in enumerate(_images(rng, 240)):
        deg = [policy_rotate, 30.0, 90.0, 180.0, 270.0, -45.0, 0.0, 360.0, float(rng.uniform(-180, 180))][t % 9]
        got, want = _ours("rotate", arr, deg, 0), _pil_rotate(arr, deg)
        assert np.array_equal(got, want), (t, arr.shape, deg, int((got != want).sum()))
        m = [*policy_shear, 0.3, float(rng.uniform(0, 0.3))][t % 4] * (1 if t % 2 else -1)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3)) if arr.ndim == 3 else int(rng.integers(0, 256))
        for axis in "xy":
            got, want = _ours(f"shear_{axis}", arr, m, fill), _pil_shear(arr, m, axis, fill)
            assert np.array_equal(got, want), (t, arr.shape, axis, m, int((got != want).sum()))
        checked += 1
    assert checked == 240


def test_pil_rotation_fixed_point_reference():
    """The fixed-point sampling written out independently of the module (PIL's Image.rotate: the matrix of the
    inverse rotation about the centre, rounded to 15 decimals, in 16.16 fixed point, accumulated per row)."""
    rng = np.random.default_rng(5)
    for h, w, deg in [(32, 32, 20 / 3), (28, 28, 20 / 3), (9, 13, 33.3), (32, 32, -120.0)]:
        arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
        t = -math.radians(deg % 360.0)
        a, b, d, e = (round(math.cos(t), 15), round(math.sin(t), 15), round(-math.sin(t), 15),
                      round(math.cos(t), 15))
        c = a * -(w / 2) + b * -(h / 2) + w / 2
        f = d * -(w / 2) + e * -(h / 2) + h / 2
        fx = [math.floor(v * 65536 + 0.5) for v in (a, b, c + a / 2 + b / 2, d, e, f + d / 2 + e / 2)]
        want = np.full((h, w), 128, dtype=np.uint8)
        for y in range(h):
            xx, yy = fx[2] + y * fx[1], fx[5] + y * fx[4]
            for x in range(w):
                col, row = xx >> 16, yy >> 16
                if 0 <= col < w and 0 <= row < h:
                    want[y, x] = arr[row, col]
                xx += fx[0]
                yy += fx[3]
        assert np.array_equal(_ours("rotate", arr, deg, 0), want), (h, w, deg)


def test_fill_levels_are_the_integer_part_of_255_mean():
    # CIFAR-10's mean: 255 * m = 125.3, 122.95, 113.87 -> levels 125, 122, 113 (not rounded: 123, 114)
    mean = (0.49139968, 0.48215841, 0.44653091)
    assert fill_levels(mean).tolist() == [125, 122, 113]
    assert fill_levels(mean).tolist() == [int(255 * torch.tensor(v, dtype=torch.float32)) for v in mean]


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
    assert {"color", "translate_y", "shear_y"} <= SIGNED and not {"solarize", "rotate"} & SIGNED
    # the magnitude tables are numpy.linspace's values, bit for bit
    for name, (a, b) in {"shear_x": (0, 0.3), "translate_x": (0, 150 / 331), "rotate": (0, 30), "color": (0, 0.9),
                         "solarize": (256, 0)}.items():
        scale = 32 if name == "translate_x" else 1
        assert [MAGNITUDES[name](k, 32) for k in range(10)] == [v * scale for v in np.linspace(a, b, 10).tolist()]


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
