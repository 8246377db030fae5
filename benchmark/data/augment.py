"""Data augmentation and batching in plain torch, on batch tensors N,C,H,W, with an explicit `torch.Generator`.

Nothing here touches the global random state. Random numbers are drawn on the generator's device and moved to the
data's device, so a CPU generator drives CUDA batches too (and gives the same augmentation on either).

The paper's CIFAR recipe is ``Augment.from_config({'crop': 4, 'flip': True, 'autoaugment': True, 'cutout': 16},
mean=ds.mean)`` (padding, cutout and AutoAugment fill with the dataset mean); MNIST used no augmentation. Order of
application: crop, flip, AutoAugment (the CIFAR-10 policy, in plain torch: no torchvision), cutout. As the
original, which works on 8-bit images, padding and AutoAugment's shear and translation fill with the pixel level
``floor(255 * mean)`` (computed in float32), Cutout with the mean itself, AutoAugment's rotation with grey (128).
"""
from __future__ import annotations

from typing import Iterator, Mapping

import math

import torch

from bitbench.configs.errors import UsageError

__all__ = ["random_crop", "random_hflip", "cutout", "autoaugment", "Augment", "batches", "CIFAR10_POLICY", "AA_OPS",
           "fill_levels"]


def _check(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a batch N,C,H,W, got shape {tuple(x.shape)}")


def _gen_device(generator: torch.Generator | None) -> torch.device:
    if generator is None:
        raise ValueError("an explicit torch.Generator is required (the global RNG is never used)")
    return generator.device


def fill_levels(fill) -> torch.Tensor:
    """The 8-bit pixel levels of ``fill`` (values in [0, 1]): ``floor(255 * fill)`` computed in float32, as the
    original casts its float32 mean to the integer fill colour of its 8-bit images."""
    return torch.floor(torch.as_tensor(fill, dtype=torch.float32).flatten() * 255)


def _fill_like(x: torch.Tensor, fill) -> torch.Tensor:
    """``fill`` (a number or one value per channel) as a 1,C,1,1 tensor of x's dtype and device."""
    f = torch.as_tensor(fill, dtype=x.dtype, device=x.device).flatten()
    if f.numel() not in (1, x.shape[1]):
        raise ValueError(f"fill needs 1 or {x.shape[1]} values (one per channel), got {f.numel()}")
    return f.expand(x.shape[1]).view(1, -1, 1, 1)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator, *, fill=0.0) -> torch.Tensor:
    """Pad each image by ``padding`` pixels of ``fill`` (a number or one value per channel) on every side and cut
    a random HxW window (per image, offsets uniform in 0..2*padding)."""
    _check(x)
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    dev = _gen_device(generator)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=dev).to(x.device)
    padded = _fill_like(x, fill).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # N,H
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # N,W
    ni = torch.arange(n, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[ni, ci, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check(x)
    dev = _gen_device(generator)
    flip = (torch.rand(x.shape[0], generator=generator, device=dev) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator, *, fill=0.0) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): per image, set a ``size`` x ``size`` square to ``fill`` (a number or one
    value per channel); its centre is
    uniform over all pixels, the square is clipped at the borders (rows cy - size//2 .. cy - size//2 + size - 1)."""
    _check(x)
    if size <= 0:
        return x
    n, _, h, w = x.shape
    dev = _gen_device(generator)
    cy = torch.randint(0, h, (n,), generator=generator, device=dev).to(x.device)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev).to(x.device)
    y0 = (cy - size // 2)[:, None]
    x0 = (cx - size // 2)[:, None]
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= y0) & (ys < y0 + size)  # N,H
    in_x = (xs >= x0) & (xs < x0 + size)  # N,W
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]  # N,1,H,W
    return torch.where(mask, _fill_like(x, fill), x)


# ------------------------------------------------------------------------------------------------ AutoAugment
# The CIFAR-10 policy of Cubuk et al. (AutoAugment, CVPR 2019): 25 sub-policies of two (operation, probability,
# magnitude index 0..9) each. Implemented here on tensors (no torchvision, no PIL). Images are handled as integer
# pixel levels 0..255 (x * 255 rounded), every operation returns integer levels (rounded half to even, clamped to
# 0..255), and the batch goes back to [0, 1] at the end. Rotation and shear compute what PIL computes for the
# original (Image.rotate: nearest neighbour in 16.16 fixed point; Image.transform AFFINE: bicubic sampling); the
# magnitudes are numpy.linspace's values.
CIFAR10_POLICY = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, 1)),
)
POLICIES = {"cifar10": CIFAR10_POLICY}


def _lin(a: float, b: float, k: int) -> float:
    """``numpy.linspace(a, b, 10)[k]`` (the original's magnitude tables): ``k * ((b - a) / 9) + a``, ``b`` at 9."""
    return float(b) if k == 9 else k * ((b - a) / 9) + a


# magnitude index k (0..9) -> the operation's parameter; SIGNED operations get a random sign per image
MAGNITUDES = {
    "shear_x": lambda k, size: _lin(0.0, 0.3, k),               # shear factor
    "shear_y": lambda k, size: _lin(0.0, 0.3, k),
    "translate_x": lambda k, size: _lin(0.0, 150 / 331, k) * size,  # pixels
    "translate_y": lambda k, size: _lin(0.0, 150 / 331, k) * size,
    "rotate": lambda k, size: _lin(0.0, 30.0, k),                # degrees, counter-clockwise (no random sign)
    "color": lambda k, size: _lin(0.0, 0.9, k),                  # enhancement factor 1 +- m
    "contrast": lambda k, size: _lin(0.0, 0.9, k),
    "brightness": lambda k, size: _lin(0.0, 0.9, k),
    "sharpness": lambda k, size: _lin(0.0, 0.9, k),
    "posterize": lambda k, size: float(round(_lin(8.0, 4.0, k))),  # bits kept
    "solarize": lambda k, size: _lin(256.0, 0.0, k),              # threshold (levels >= it are inverted)
    "autocontrast": lambda k, size: 0.0, "equalize": lambda k, size: 0.0, "invert": lambda k, size: 0.0,
}
SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "color", "contrast", "brightness", "sharpness"}
GEOMETRIC = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate"}
ROTATE_FILL = 128.0  # the original rotates an RGBA copy and composites it onto grey (128) where nothing was sampled


def _finish(u: torch.Tensor) -> torch.Tensor:
    return u.round_().clamp_(0, 255)


def _gray(u: torch.Tensor) -> torch.Tensor:
    """Per-pixel luminance N,1,H,W (ITU-R 601: 0.299 R + 0.587 G + 0.114 B; one channel: itself)."""
    if u.shape[1] == 3:
        return (0.299 * u[:, 0:1] + 0.587 * u[:, 1:2] + 0.114 * u[:, 2:3]).round_()
    return u.mean(1, keepdim=True).round_()


def _blend(degenerate: torch.Tensor, u: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``degenerate + factor * (u - degenerate)`` per image (the enhancement operations)."""
    return _finish(degenerate + factor.view(-1, 1, 1, 1) * (u - degenerate))


def aa_invert(u, m, fill):
    return 255 - u


def aa_brightness(u, m, fill):
    return _blend(torch.zeros_like(u), u, 1 + m)


def aa_color(u, m, fill):
    return _blend(_gray(u).expand_as(u), u, 1 + m)


def aa_contrast(u, m, fill):
    mean = _gray(u).mean(dim=(1, 2, 3), keepdim=True).round_()
    return _blend(mean.expand_as(u), u, 1 + m)


def aa_sharpness(u, m, fill):
    """Blend with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 (border pixels unsmoothed)."""
    n, c, h, w = u.shape
    k = torch.ones(3, 3, dtype=u.dtype, device=u.device)
    k[1, 1] = 5
    k = (k / 13).expand(c, 1, 3, 3)
    smooth = u.clone()
    if h > 2 and w > 2:
        smooth[:, :, 1:-1, 1:-1] = torch.nn.functional.conv2d(u, k, groups=c).round_()
    return _blend(smooth, u, 1 + m)


def aa_posterize(u, m, fill):
    q = (2 ** (8 - m)).view(-1, 1, 1, 1)
    return torch.div(u, q, rounding_mode="floor") * q


def aa_solarize(u, m, fill):
    return torch.where(u >= m.view(-1, 1, 1, 1), 255 - u, u)


def aa_autocontrast(u, m, fill):
    lo = u.amin(dim=(2, 3), keepdim=True)
    hi = u.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(hi > lo, 255 / (hi - lo).clamp_min(1), torch.ones_like(hi))
    off = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return _finish((u - off) * scale)


def aa_equalize(u, m, fill):
    """Histogram equalization per image and channel (the lookup table of PIL's ImageOps.equalize): with ``h`` the
    256-bin histogram and ``step = (count - h[last non-empty level]) // 255`` (identity when 0), level ``i`` maps to
    ``(step // 2 + sum(h[:i])) // step``."""
    n, c, hh, ww = u.shape
    idx = u.to(torch.int64).reshape(n * c, -1)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=u.device).scatter_add_(1, idx, torch.ones_like(idx))
    levels = torch.arange(256, device=u.device)
    last = torch.where(hist > 0, levels, -1).amax(1, keepdim=True)
    step = (hh * ww - hist.gather(1, last)) // 255
    cum = torch.cumsum(hist, 1) - hist  # counts below each level
    safe = step.clamp_min(1)
    lut = ((safe // 2 + cum) // safe).clamp_(max=255)
    lut = torch.where(step > 0, lut, levels.expand_as(lut))
    return lut.gather(1, idx).to(u.dtype).view(n, c, hh, ww)


def _affine(u: torch.Tensor, a: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour resampling: output pixel centre ``p`` (relative to the image centre) reads the input
    pixel that contains ``a[:, :, :2] @ p + a[:, :, 2]``; outside the image it is ``fill`` (per channel)."""
    n, c, h, w = u.shape
    ys = torch.arange(h, dtype=torch.float64, device=u.device) + 0.5 - h / 2
    xs = torch.arange(w, dtype=torch.float64, device=u.device) + 0.5 - w / 2
    py, px = torch.meshgrid(ys, xs, indexing="ij")
    a = a.to(torch.float64)
    sx = a[:, 0, 0, None, None] * px + a[:, 0, 1, None, None] * py + a[:, 0, 2, None, None] + w / 2
    sy = a[:, 1, 0, None, None] * px + a[:, 1, 1, None, None] * py + a[:, 1, 2, None, None] + h / 2
    # snap to the pixel grid first (rotations by multiples of 90 degrees land exactly on pixel centres)
    col = torch.floor(sx.mul(1e9).round().div(1e9)).to(torch.int64)
    row = torch.floor(sy.mul(1e9).round().div(1e9)).to(torch.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    ni = torch.arange(n, device=u.device)[:, None, None, None]
    ci = torch.arange(c, device=u.device)[None, :, None, None]
    out = u[ni, ci, row.clamp(0, h - 1)[:, None], col.clamp(0, w - 1)[:, None]]
    return torch.where(inside[:, None], out, fill.view(1, c, 1, 1).to(u.dtype))


def _mat(m: torch.Tensor, entries) -> torch.Tensor:
    a = torch.zeros(m.shape[0], 2, 3, dtype=torch.float64, device=m.device)
    a[:, 0, 0] = 1
    a[:, 1, 1] = 1
    for (i, j), v in entries.items():
        a[:, i, j] = v
    return a


def _pil_bicubic(v1, v2, v3, v4, d):
    """PIL's cubic convolution (a = -1) of four samples at offset ``d`` from ``v2``, its operation order in
    float64."""
    p1 = v2
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


def _affine_bicubic(u: torch.Tensor, a: list, fill: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.transform(size, AFFINE, a, BICUBIC, fillcolor=fill)`` of a batch with one matrix ``a`` (six
    floats): output pixel (x, y) samples the input at ``(a0 (x+.5) + a1 (y+.5) + a2, a3 (x+.5) + a4 (y+.5) + a5)``
    (pixel edges at integers, origin at the top-left corner); a source outside [0, W) x [0, H) gives ``fill``;
    inside, the 4x4 neighbours (edge-clamped) around the sample minus half a pixel are interpolated by rows then
    columns, and the result is truncated to 0..255 (float64 throughout)."""
    n, c, h, w = u.shape
    dev = u.device
    xs = (torch.arange(w, dtype=torch.float64, device=dev) + 0.5)[None, :]
    ys = (torch.arange(h, dtype=torch.float64, device=dev) + 0.5)[:, None]
    sx = a[0] * xs + a[1] * ys + a[2]  # H, W
    sy = a[3] * xs + a[4] * ys + a[5]
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    sx, sy = sx - 0.5, sy - 0.5
    x0, y0 = torch.floor(sx), torch.floor(sy)
    dx, dy = sx - x0, sy - y0
    x0, y0 = x0.to(torch.int64), y0.to(torch.int64)
    src = u.to(torch.float64)
    rows = []
    for j in range(-1, 3):
        r = (y0 + j).clamp(0, h - 1)
        taps = [src[:, :, r, (x0 + i).clamp(0, w - 1)] for i in range(-1, 3)]  # N, C, H, W each
        rows.append(_pil_bicubic(*taps, dx))
    v = _pil_bicubic(*rows, dy)
    v = torch.where(v <= 0, torch.zeros_like(v), torch.where(v >= 255, torch.full_like(v, 255.0), torch.trunc(v)))
    return torch.where(inside, v.to(u.dtype), fill.view(1, c, 1, 1).to(u.dtype))


def aa_shear_x(u, m, fill):
    """PIL's affine (1, m, 0, 0, 1, 0) about the top-left corner, bicubic: source x = x + m y."""
    return _per_magnitude(u, m, lambda uu, v: _affine_bicubic(uu, [1.0, v, 0.0, 0.0, 1.0, 0.0], fill))


def aa_shear_y(u, m, fill):
    """PIL's affine (1, 0, 0, m, 1, 0) about the top-left corner, bicubic: source y = m x + y."""
    return _per_magnitude(u, m, lambda uu, v: _affine_bicubic(uu, [1.0, 0.0, 0.0, v, 1.0, 0.0], fill))


def aa_translate_x(u, m, fill):
    return _affine(u, _mat(m, {(0, 2): -m.double()}), fill)  # content moves right by m pixels


def aa_translate_y(u, m, fill):
    return _affine(u, _mat(m, {(1, 2): -m.double()}), fill)  # content moves down by m pixels


def _pil_rotate_fixed(degrees: float, w: int, h: int) -> list[int] | None:
    """The 16.16 fixed-point coefficients of PIL's ``Image.rotate(degrees)`` of a W x H image (about its centre,
    counter-clockwise, nearest neighbour); None for a multiple of 360 degrees (PIL copies the image)."""
    angle = degrees % 360.0
    if angle == 0:
        return None
    t = -math.radians(angle)
    a = [round(math.cos(t), 15), round(math.sin(t), 15), 0.0, round(-math.sin(t), 15), round(math.cos(t), 15), 0.0]
    cx, cy = w / 2, h / 2
    a[2] = a[0] * -cx + a[1] * -cy + a[2] + cx
    a[5] = a[3] * -cx + a[4] * -cy + a[5] + cy

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    return [fix(a[0]), fix(a[1]), fix(a[2] + a[0] * 0.5 + a[1] * 0.5), fix(a[3]), fix(a[4]),
            fix(a[5] + a[3] * 0.5 + a[4] * 0.5)]


def aa_rotate(u, m, fill):
    """PIL's ``Image.rotate(m)`` (degrees, counter-clockwise about the centre, nearest neighbour computed in 16.16
    fixed point: output (x, y) reads input ``((A2 + x A0 + y A1) >> 16, (A5 + x A3 + y A4) >> 16)``); pixels with no
    source are grey (128), whatever ``fill`` (the original composites the rotated image onto grey)."""
    n, c, h, w = u.shape

    def rot(uu, v):
        f = _pil_rotate_fixed(v, w, h)
        if f is None:
            return uu.clone()
        xs = torch.arange(w, dtype=torch.int64, device=u.device)[None, :]
        ys = torch.arange(h, dtype=torch.int64, device=u.device)[:, None]
        col = torch.div(f[2] + xs * f[0] + ys * f[1], 65536, rounding_mode="floor")
        row = torch.div(f[5] + xs * f[3] + ys * f[4], 65536, rounding_mode="floor")
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        out = uu[:, :, row.clamp(0, h - 1), col.clamp(0, w - 1)]
        return torch.where(inside, out, torch.full_like(out, ROTATE_FILL))

    return _per_magnitude(u, m, rot)


def _per_magnitude(u: torch.Tensor, m: torch.Tensor, fn) -> torch.Tensor:
    """``fn(images, magnitude)`` on the images of each distinct magnitude (a Python float), in place of a loop."""
    out = torch.empty_like(u)
    for v in sorted(set(m.tolist())):
        idx = (m == v).nonzero().flatten().to(u.device)
        out[idx] = fn(u[idx], float(v))
    return out


AA_OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("aa_")}


def autoaugment(x: torch.Tensor, generator: torch.Generator, policy: str = "cifar10", *, fill=0.0) -> torch.Tensor:
    """AutoAugment with the CIFAR-10 policy on a float batch in [0, 1], in plain torch.

    Per image: one of the 25 sub-policies uniformly, each of its two operations applied with its probability and
    magnitude (a random sign for the signed ones; rotation has none), in order. Shear and translation fill with
    ``fill`` (a number or one value per channel, in [0, 1]; the paper: the dataset mean) as the 8-bit level
    :func:`fill_levels`; rotation fills with grey (128). All randomness comes from ``generator``."""
    _check(x)
    if policy.lower() not in POLICIES:
        raise UsageError(f"augment: unknown AutoAugment policy {policy!r}; known: {sorted(POLICIES)}")
    table = POLICIES[policy.lower()]
    n, c, h, w = x.shape
    dev = _gen_device(generator)
    pick = torch.randint(0, len(table), (n,), generator=generator, device=dev).cpu()
    coin = torch.rand(n, 2, generator=generator, device=dev).cpu()
    sign = torch.randint(0, 2, (n, 2), generator=generator, device=dev).cpu().mul(2).sub(1)
    u = (x.detach().clamp(0, 1) * 255).round()
    fill_t = fill_levels(fill).expand(c).to(device=u.device, dtype=u.dtype)
    for j in range(2):
        groups: dict = {}
        for i in range(n):
            name, prob, k = table[int(pick[i])][j]
            if float(coin[i, j]) < prob:
                mag = MAGNITUDES[name](k, w if name.endswith("_x") else h)
                groups.setdefault(name, ([], []))
                groups[name][0].append(i)
                groups[name][1].append(mag * int(sign[i, j]) if name in SIGNED else mag)
        for name, (idx, mags) in groups.items():
            it = torch.tensor(idx, device=u.device)
            # geometric magnitudes stay binary64 (the original's numpy values); the others as the images' dtype
            mt = torch.tensor(mags, dtype=torch.float64 if name in GEOMETRIC else u.dtype, device=u.device)
            u[it] = AA_OPS[name](u[it], mt, fill_t)
    return u.div_(255.0).to(x.dtype)

class Augment:
    """A composable augmentation: ``Augment(crop=4, flip=True, cutout=16, autoaugment=True, mean=ds.mean)`` or
    ``Augment.from_config({...}, mean=ds.mean)``; call as ``aug(x, generator)``. All off = identity.

    ``fill`` (padding, cutout, AutoAugment's geometric operations): ``'mean'`` (the default, as the paper: the
    dataset's per-channel mean, given as ``mean``), a number, or one value per channel, in [0, 1]."""

    KEYS = ("crop", "flip", "autoaugment", "cutout", "fill")

    def __init__(self, crop: int = 0, flip: bool = False, cutout: int = 0, autoaugment: bool | str = False,
                 fill="mean", mean=None):
        for k, v in (("crop", crop), ("cutout", cutout)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UsageError(f"augment: {k} must be a non-negative integer, got {v!r}")
        self.crop = int(crop)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        if autoaugment == "if-available":  # older suites: AutoAugment is always available now
            autoaugment = True
        self.autoaugment = autoaugment if isinstance(autoaugment, str) else ("cifar10" if autoaugment else "")
        if self.autoaugment and self.autoaugment.lower() not in POLICIES:
            raise UsageError(f"augment: unknown AutoAugment policy {self.autoaugment!r}; known: {sorted(POLICIES)}"
                             " (or true / false)")
        self.fill_spec = fill
        if isinstance(fill, str):
            if fill != "mean":
                raise UsageError(f"augment: fill must be 'mean', a number or one number per channel, got {fill!r}")
            needs = self.crop or self.cutout or self.autoaugment
            if mean is None and needs:
                raise UsageError("augment: fill='mean' needs the dataset mean (Augment(..., mean=ds.mean))")
            self.fill = tuple(float(v) for v in mean) if mean is not None else (0.0,)
        else:
            vals = fill if isinstance(fill, (list, tuple)) else [fill]
            if not vals or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
                                   for v in vals):
                raise UsageError(f"augment: fill values must lie in [0, 1], got {fill!r}")
            self.fill = tuple(float(v) for v in vals)

    @classmethod
    def from_config(cls, config: Mapping | None, mean=None) -> "Augment":
        config = dict(config or {})
        unknown = sorted(set(config) - set(cls.KEYS))
        if unknown:
            raise UsageError(f"augment: unknown option(s) {unknown}; known: {list(cls.KEYS)}")
        norm = {k: (0 if v in (None, False) and k in ("crop", "cutout") else v) for k, v in config.items()}
        return cls(**norm, mean=mean)

    def config(self) -> dict:
        return {"crop": self.crop, "flip": self.flip, "cutout": self.cutout,
                "autoaugment": self.autoaugment or False, "fill": self.fill_spec}

    @property
    def is_identity(self) -> bool:
        return not (self.crop or self.flip or self.cutout or self.autoaugment)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop:  # the original pads its 8-bit image with the level floor(255 * mean)
            x = random_crop(x, self.crop, generator, fill=(fill_levels(self.fill) / 255).tolist())
        if self.flip:
            x = random_hflip(x, generator)
        if self.autoaugment:
            x = autoaugment(x, generator, self.autoaugment, fill=self.fill)
        if self.cutout:
            x = cutout(x, self.cutout, generator, fill=self.fill)
        return x

    def __repr__(self) -> str:
        return "Augment(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool,
            generator: torch.Generator | None = None, drop_last: bool = False
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x[idx], y[idx])`` mini-batches; with ``shuffle`` a permutation from ``generator`` (required)."""
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"batches: {n} inputs but {y.shape[0]} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle:
        dev = _gen_device(generator)
        order = torch.randperm(n, generator=generator, device=dev).to(x.device)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        if order is None:
            yield x[i:i + batch_size], y[i:i + batch_size]
        else:
            idx = order[i:i + batch_size]
            yield x[idx], y[idx.to(y.device)]
