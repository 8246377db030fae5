"""The CUDA backend's two launch paths (direct cuLaunchKernel, CuPy's launcher) give the same bits."""

import pytest
import torch

from bitbench import kernels


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, bits", [(torch.uint8, 8), (torch.uint8, 5), (torch.int16, 16), (torch.int32, 32)])
def test_direct_and_cupy_launch_agree(monkeypatch, dtype, bits):
    if kernels.backends()["cuda"] != "cupy":
        pytest.skip(f"CuPy backend not in use: {kernels.backends()['cupy_error']}")
    g = torch.Generator().manual_seed(0)
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max, (300_001,), dtype=torch.int64, generator=g).to(dtype).cuda()
    monkeypatch.setenv("BITBENCH_CUPY_LAUNCH", "direct")
    a = kernels.random_flip(x, 0.03, 0.01, seed=2 ** 40 + 5, bits=bits, offset=2 ** 33)
    monkeypatch.setenv("BITBENCH_CUPY_LAUNCH", "cupy")
    b = kernels.random_flip(x, 0.03, 0.01, seed=2 ** 40 + 5, bits=bits, offset=2 ** 33)
    ref = kernels.random_flip(x, 0.03, 0.01, seed=2 ** 40 + 5, bits=bits, offset=2 ** 33, backend="torch")
    assert torch.equal(a, ref) and torch.equal(b, ref)
    from bitbench.kernels import _cupy_backend

    assert not _cupy_backend._fast_error, _cupy_backend._fast_error
