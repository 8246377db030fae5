"""Reparameterized norms (scale = 1 + weight): init, equivalence with the plain layers, clipping semantics."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from bitbench.defenses.norms import (ReparamBatchNorm1d, ReparamBatchNorm2d, ReparamGroupNorm, effective_weight,
                            is_reparam_norm)


def _plain_from(r: nn.Module, plain: nn.Module) -> nn.Module:
    sd = copy.deepcopy(r.state_dict())
    sd["weight"] = sd["weight"] + 1
    plain.load_state_dict(sd)
    return plain


def test_group_norm_init_and_equivalence():
    torch.manual_seed(0)
    r = ReparamGroupNorm(4, 16)
    assert torch.count_nonzero(r.weight) == 0 and torch.count_nonzero(r.bias) == 0
    x = torch.randn(3, 16, 5, 5) * 3 + 1
    plain = nn.GroupNorm(4, 16)  # weight 1, bias 0
    assert torch.allclose(r(x), plain(x), atol=1e-6)
    with torch.no_grad():
        r.weight.uniform_(-0.1, 0.1)
        r.bias.uniform_(-0.1, 0.1)
    assert torch.allclose(r(x), _plain_from(r, nn.GroupNorm(4, 16))(x), atol=1e-6)
    assert isinstance(r, nn.GroupNorm) and is_reparam_norm(r) and not is_reparam_norm(plain)
    assert torch.allclose(effective_weight(r), r.weight + 1) and effective_weight(plain) is plain.weight


@pytest.mark.parametrize("cls,plain_cls,shape", [(ReparamBatchNorm2d, nn.BatchNorm2d, (8, 6, 4, 4)),
                                                 (ReparamBatchNorm1d, nn.BatchNorm1d, (8, 6)),
                                                 (ReparamBatchNorm1d, nn.BatchNorm1d, (8, 6, 5))])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_equivalence(cls, plain_cls, shape, momentum):
    torch.manual_seed(1)
    r = cls(6, momentum=momentum)
    assert torch.count_nonzero(r.weight) == 0 and torch.count_nonzero(r.bias) == 0
    with torch.no_grad():
        r.weight.uniform_(-0.1, 0.1)
        r.bias.uniform_(-0.1, 0.1)
    p = _plain_from(r, plain_cls(6, momentum=momentum))
    for _ in range(3):  # training mode: batch stats, running stats updated identically
        x = torch.randn(*shape) * 2 + 0.5
        assert torch.allclose(r(x), p(x), atol=1e-5)
    assert torch.allclose(r.running_mean, p.running_mean) and torch.allclose(r.running_var, p.running_var)
    assert int(r.num_batches_tracked) == int(p.num_batches_tracked) == 3
    r.eval(), p.eval()
    x = torch.randn(*shape)
    assert torch.allclose(r(x), p(x), atol=1e-5)
    assert isinstance(r, plain_cls) and is_reparam_norm(r)


def test_batch_norm_no_running_stats_and_gradients():
    r = ReparamBatchNorm2d(3, track_running_stats=False)
    p = nn.BatchNorm2d(3, track_running_stats=False)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    r.eval(), p.eval()
    assert torch.allclose(r(x), p(x), atol=1e-6)
    r.train()
    r(x).square().sum().backward()
    assert r.weight.grad is not None and r.bias.grad is not None


def test_clipping_does_not_cap_scale():
    """Weight clipping to [-0.1, 0.1] leaves the effective scale in [0.9, 1.1] (a plain norm would be capped at 0.1)."""
    r = ReparamGroupNorm(2, 4)
    with torch.no_grad():
        r.weight.fill_(0.5).clamp_(-0.1, 0.1)
    x = torch.randn(2, 4, 3, 3)
    ref = nn.functional.group_norm(x, 2)
    assert torch.allclose(r(x), 1.1 * ref, atol=1e-5)


def test_affine_required_and_state_dict_keys():
    with pytest.raises(ValueError):
        ReparamGroupNorm(2, 4, affine=False)
    with pytest.raises(ValueError):
        ReparamBatchNorm2d(4, affine=False)
    assert set(ReparamBatchNorm2d(4).state_dict()) == set(nn.BatchNorm2d(4).state_dict())
    assert set(ReparamGroupNorm(2, 4).state_dict()) == set(nn.GroupNorm(2, 4).state_dict())
