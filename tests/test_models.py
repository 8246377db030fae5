"""Architectures: shapes, parameter counts, norm options, the whitening layer, seeding, a quick training check."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bitbench.models import NORMS, Normalize, build_model, count_parameters, describe_models, group_count, list_models
from bitbench.defenses.norms import ReparamBatchNorm1d, ReparamBatchNorm2d, ReparamGroupNorm

ALL_NORMS = ["none", "bn", "gn", "rbn", "rgn"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


CASES = [("lenet5", 1, 28, None), ("lenet5", 3, 32, None), ("lenet5", 1, 8, None), ("mlp", 1, 28, None),
         ("simplenet", 3, 32, 16), ("simplenet", 1, 28, 16), ("resnet20", 3, 32, None), ("resnet20", 1, 28, 8)]


def test_registry():
    assert list_models() == ["gpt", "lenet5", "mlp", "resnet20", "simplenet", "vit"]
    assert list_models("res*") == ["resnet20"]
    info = {d["name"]: d for d in describe_models()}
    for name, d in info.items():
        assert d["summary"] and "norm" in d["params"] and "norm" in d["param_docs"]
        assert not {"num_classes", "in_channels", "image_size", "mean", "std"} & set(d["params"])
        if name != "vit":
            assert "width" in d["params"]
    assert info["lenet5"]["aliases"] == ["lenet", "lenet-5"]
    assert info["vit"]["params"] == {"patch": 7, "dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2, "norm": "rln"}
    # aliases build the same architecture
    a = build_model("lenet", num_classes=10, in_channels=1, image_size=28, seed=0)
    b = build_model("lenet5", num_classes=10, in_channels=1, image_size=28, seed=0)
    assert a.build_spec == b.build_spec and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert list(NORMS) == ALL_NORMS


@pytest.mark.parametrize("name,c,s,width", CASES)
@pytest.mark.parametrize("norm", ALL_NORMS)
def test_forward_shapes(name, c, s, width, norm):
    m = build_model(name, num_classes=7, in_channels=c, image_size=s, norm=norm, width=width, seed=0)
    m.train()
    out = m(torch.rand(3, c, s, s))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    m.eval()
    with torch.no_grad():
        assert m(torch.rand(2, c, s, s)).shape == (2, 7)
    kinds = {type(mod) for mod in m.modules()}
    expected = {"none": None, "bn": (nn.BatchNorm2d, nn.BatchNorm1d), "gn": nn.GroupNorm,
                "rbn": (ReparamBatchNorm2d, ReparamBatchNorm1d), "rgn": ReparamGroupNorm}[norm]
    if expected is None:
        assert not any(issubclass(k, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)) for k in kinds)
    else:
        exp = expected if isinstance(expected, tuple) else (expected,)
        assert kinds & set(exp)
        if norm in ("bn", "gn"):
            assert not kinds & {ReparamBatchNorm2d, ReparamBatchNorm1d, ReparamGroupNorm}
    if norm in ("rbn", "rgn"):  # reparameterized: weight 0 at init (scale 1)
        for mod in m.modules():
            if isinstance(mod, (ReparamGroupNorm, ReparamBatchNorm2d, ReparamBatchNorm1d)):
                assert torch.count_nonzero(mod.weight) == 0


def test_parameter_counts():
    simple = build_model("simplenet", num_classes=10, in_channels=3, image_size=32, norm="gn")
    n = count_parameters(simple)
    # by hand: each conv c_in*c*k*k weights + c biases (kept under the norm, as the original), each group norm
    # 2c, the classifier 256*10 + 10
    layers = [(64, 3), (128, 3), (128, 3), (128, 3), (128, 3), (128, 3), (256, 3), (256, 3), (256, 3), (512, 3),
              (2048, 1), (256, 1), (256, 3)]
    c_in, expect = 3, 256 * 10 + 10
    for c, k in layers:
        expect += c_in * c * k * k + c + 2 * c
        c_in = c
    assert n == expect == 5_498_378
    assert count_parameters(build_model("simplenet", num_classes=10, in_channels=3, image_size=32)) == 5_489_290
    convs = [mod for mod in simple.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 13 and all(c.bias is not None for c in convs)
    # the logits layer: Kaiming-normal (fan-in 256, ReLU gain: std sqrt(2/256)), bias 0
    w = simple.classifier.weight
    assert abs(float(w.std()) - (2 / 256) ** 0.5) < 0.1 * (2 / 256) ** 0.5 and float(w.abs().max()) > 1 / 16
    assert torch.count_nonzero(simple.classifier.bias) == 0
    assert [c.out_channels for c in convs] == [64, 128, 128, 128, 128, 128, 256, 256, 256, 512, 2048, 256, 256]
    res = build_model("resnet20", num_classes=10, in_channels=3, image_size=32, norm="bn")
    assert count_parameters(res) == 269_722
    assert len([mod for mod in res.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]) == 20
    assert count_parameters(build_model("lenet5", num_classes=10, in_channels=1, image_size=28)) == 61_706
    half = build_model("simplenet", num_classes=10, in_channels=3, image_size=32, width=32)
    assert [mod.out_channels for mod in half.modules() if isinstance(mod, nn.Conv2d)][:2] == [32, 64]


def test_simplenet_below_32_pixels_drops_blocks_9_and_10():
    """Below 32 pixels (28-pixel MNIST) the original's SimpleNet has 11 convs: blocks 9-10 (256 -> 256 with a
    pool, 256 -> 512 with a pool) are dropped and block 8 goes straight to 512 channels; 3 pools (28 -> 14 -> 7 ->
    3, floored), then the global max pool. Counted by hand against the layer list written out here."""
    layers28 = [(64, 3), (128, 3), (128, 3), (128, 3), (128, 3), (128, 3), (256, 3), (512, 3), (2048, 1), (256, 1),
                (256, 3)]
    for c_in, classes in ((1, 10), (3, 100)):
        m = build_model("simplenet", num_classes=classes, in_channels=c_in, image_size=28, norm="rgn")
        convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
        assert [(c.out_channels, c.kernel_size[0]) for c in convs] == layers28
        expect, c = 256 * classes + classes, c_in
        for out, k in layers28:
            expect += c * out * k * k + out + 2 * out  # weights, the kept conv bias, the norm's two vectors
            c = out
        assert count_parameters(m) == expect
        pools = [mod for mod in m.features if isinstance(mod, nn.MaxPool2d)]
        assert len(pools) == 3
        sizes, h = [], torch.zeros(1, c_in, 28, 28)
        for mod in m.features:
            h = mod(h)
            if isinstance(mod, nn.MaxPool2d):
                sizes.append(h.shape[-1])
        assert sizes == [14, 7, 3]
    assert count_parameters(build_model("simplenet", num_classes=10, in_channels=1, image_size=28,
                                        norm="rgn")) == 4_316_042
    # from 32 pixels on: the 13 layers (test_parameter_counts), 5 pools down to 1 pixel
    m32 = build_model("simplenet", num_classes=10, in_channels=3, image_size=32, norm="rgn")
    assert len([mod for mod in m32.modules() if isinstance(mod, nn.Conv2d)]) == 13
    assert len([mod for mod in m32.features if isinstance(mod, nn.MaxPool2d)]) == 5


def test_normalize_layer():
    norm = Normalize((0.5, 0.25, 0.1), (0.5, 0.5, 0.2))
    assert list(norm.parameters()) == []
    assert set(dict(norm.named_buffers())) == {"mean", "std"}
    x = torch.rand(2, 3, 4, 4)
    expect = (x - torch.tensor([0.5, 0.25, 0.1]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.5, 0.2]).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), expect)
    with pytest.raises(ValueError):
        Normalize((0.5,), (0.0,))
    m0 = build_model("lenet5", num_classes=10, in_channels=1, image_size=28, seed=3)
    m1 = build_model("lenet5", num_classes=10, in_channels=1, image_size=28, mean=(0.13,), std=(0.31,), seed=3)
    assert isinstance(m1.normalize, Normalize) and isinstance(m0.normalize, nn.Identity)
    # the whitening layer adds no parameters, and parameter order / values are unchanged
    assert [n for n, _ in m0.named_parameters()] == [n for n, _ in m1.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(m0.parameters(), m1.parameters()))
    assert "normalize.mean" in m1.state_dict()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(m1(x), m0((x - 0.13) / 0.31), atol=1e-5)
    with pytest.raises(ValueError, match="mean"):
        build_model("lenet5", num_classes=10, in_channels=3, image_size=32, mean=(0.1,), std=(0.2,))


def test_seeded_init_is_deterministic_and_leaves_global_rng():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_model("resnet20", num_classes=10, in_channels=3, image_size=32, norm="rgn", seed=5)
    assert torch.equal(state, torch.get_rng_state())
    b = build_model("resnet20", num_classes=10, in_channels=3, image_size=32, norm="rgn", seed=5)
    c = build_model("resnet20", num_classes=10, in_channels=3, image_size=32, norm="rgn", seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    assert a.build_spec["name"] == "resnet20" and a.build_spec["seed"] == 5 and a.build_spec["norm"] == "rgn"
    rebuilt = build_model(**{k: v for k, v in a.build_spec.items()})
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), rebuilt.parameters()))


def test_bad_arguments():
    kw = dict(num_classes=10, in_channels=1, image_size=28)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16", **kw)
    with pytest.raises(ValueError, match="unknown norm"):
        build_model("lenet5", norm="ln", **kw)
    with pytest.raises(ValueError, match="model 'lenet5' has no parameter 'depth'. Valid parameters: norm=none"):
        build_model("lenet5", depth=3, **kw)
    with pytest.raises(ValueError, match="has no parameter 'dpth'"):
        build_model("mlp:dpth=3", **kw)
    assert count_parameters(build_model("mlp:depth=1,width=32", **kw)) == 784 * 32 + 32 * 10 + 10 + 32
    with pytest.raises(ValueError, match="width"):
        build_model("lenet5", width=0, **kw)
    assert count_parameters(build_model("mlp", depth=1, width=32, **kw)) == 784 * 32 + 32 * 10 + 10 + 32


def test_group_count():
    assert [group_count(c) for c in (1, 2, 6, 16, 64, 128, 2048)] == [1, 1, 3, 8, 32, 32, 32]


def test_lenet_trains_on_embedded_mnist():
    """Plain float SGD on the embedded digits: >= 90% test accuracy within a few epochs (a real-data check)."""
    from bitbench.data import batches, load_dataset

    ds = load_dataset("mnist5k")
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=28, mean=ds.mean, std=ds.std, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    epochs = 6
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * 32)
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in batches(ds.train_x, ds.train_y, 128, shuffle=True, generator=gen):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(ds.test_x).argmax(1) == ds.test_y).float().mean().item()
    assert acc >= 0.90, f"LeNet reached only {acc:.3f} after {epochs} epochs ({time.perf_counter() - t:.1f} s)"


# ---------------------------------------------------------------------------------------- vision transformer

@pytest.mark.parametrize("c,s,patch", [(1, 28, 7), (3, 32, 4), (1, 8, 3), (3, 30, 7)])
def test_vit_shapes_and_parameters(c, s, patch):
    from bitbench.models import ViT

    m = build_model("vit", num_classes=5, in_channels=c, image_size=s, patch=patch, seed=0)
    assert isinstance(m, ViT)
    side = -(-s // patch)  # padded to a multiple of the patch
    assert m.pos_embed.shape == (1, side * side, 64)
    m.train()
    assert m(torch.rand(3, c, s, s)).shape == (3, 5)
    m.eval()
    with torch.no_grad():
        out = m(torch.rand(2, c, s, s))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    names = [n for n, _ in m.named_parameters()]
    for n in ("pos_embed", "patch_embed.weight", "blocks.0.attn.in_proj_weight", "blocks.1.attn.out_proj.weight",
              "blocks.0.norm1.weight", "blocks.1.mlp.2.bias", "norm.weight", "head.weight"):
        assert n in names


def test_vit_size_norms_and_errors():
    from bitbench.defenses.norms import ReparamLayerNorm

    kw = dict(num_classes=10, in_channels=1, image_size=28)
    m = build_model("vit", **kw, seed=0)
    # patch embed 49*64+64, positions 16*64, per block: 2 norms (2*128), attention (64*192+192 + 64*64+64),
    # MLP (64*128+128 + 128*64+64); final norm 128, head 64*10+10
    block = 2 * 128 + (64 * 192 + 192 + 64 * 64 + 64) + (64 * 128 + 128 + 128 * 64 + 64)
    assert count_parameters(m) == 49 * 64 + 64 + 16 * 64 + 2 * block + 128 + 650 == 71_946
    lns = [mod for mod in m.modules() if isinstance(mod, nn.LayerNorm)]
    assert len(lns) == 5 and all(isinstance(mod, ReparamLayerNorm) for mod in lns)
    assert all(torch.count_nonzero(mod.weight) == 0 for mod in lns)  # effective scale 1 at init
    plain = build_model("vit:norm=ln", **kw, seed=0)
    assert not any(isinstance(mod, ReparamLayerNorm) for mod in plain.modules())
    assert all(torch.all(mod.weight == 1) for mod in plain.modules() if isinstance(mod, nn.LayerNorm))
    # same seed, same weights; every weight starts within +-1/sqrt(fan_in) (<= 0.16 here), positions within 0.04
    again = build_model("vit", **kw, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), again.parameters()))
    assert float(m.pos_embed.detach().abs().max()) <= 0.04
    assert max(float(p.detach().abs().max()) for p in m.parameters()) < 0.16
    for bad, match in (("vit:dim=30", "divisible by heads"), ("vit:norm=bn", "unknown norm"),
                       ("vit:depth=0", "depth must be a positive integer")):
        with pytest.raises(ValueError, match=match):
            build_model(bad, **kw)


def test_reparam_layer_norm_matches_layer_norm_with_scale_one_plus_weight():
    from bitbench.defenses.norms import ReparamLayerNorm, effective_weight

    torch.manual_seed(0)
    r = ReparamLayerNorm(6)
    with torch.no_grad():
        r.weight.uniform_(-0.1, 0.1)
        r.bias.uniform_(-0.1, 0.1)
    plain = nn.LayerNorm(6)
    with torch.no_grad():
        plain.weight.copy_(r.weight + 1)
        plain.bias.copy_(r.bias)
    x = torch.randn(4, 3, 6)
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    ref = (x - mu) / torch.sqrt(var + 1e-5) * (1 + r.weight) + r.bias
    assert torch.allclose(r(x), ref, atol=1e-6) and torch.allclose(r(x), plain(x), atol=1e-6)
    assert torch.equal(effective_weight(r), r.weight + 1)
    assert set(r.state_dict()) == set(plain.state_dict())


def test_vit_learns_the_embedded_digits(ds):
    """Quantization-aware training (RQuant) of the ViT for a few epochs on 2,000 digits: far above chance (the
    vit suite's 30 epochs on all 4,000 reach about 93%; `python -m benchmark train --suite vit` measures it)."""
    from bitbench.defenses import TrainConfig
    from bitbench.configs.registries import create_defense

    model = build_model("vit", num_classes=10, in_channels=1, image_size=28, mean=ds.mean, std=ds.std, seed=0)
    cfg = TrainConfig(epochs=4, lr=0.05, schedule="cosine", progress=False)
    create_defense("rquant").train(model, ds.train_x[:2000], ds.train_y[:2000], cfg)
    model.eval()
    with torch.no_grad():
        acc = (model(ds.test_x).argmax(1) == ds.test_y).float().mean().item()
    assert acc >= 0.6, f"the ViT reached only {acc:.3f} after 4 epochs on 2,000 images (chance: 0.1)"
