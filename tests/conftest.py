"""Shared pytest configuration."""
import pytest

import bitbench.builtin_entries  # noqa: F401  (tests use the core's registry functions directly: declare the built-ins)


def pytest_collection_modifyitems(config, items):
    """Skip `gpu`-marked tests, with a visible reason, where torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA not available")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread (the 2 cores are shared with the other test processes)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ds():
    """The embedded MNIST-5k dataset."""
    from bitbench.data import load_dataset

    return load_dataset("mnist5k")


def _philox_mask(offsets, seed: int, p: float, bits):
    """Reference xor masks of the flip rule with p01 = p10 = p (docs/patterns.md, written out): bit b of the word
    with global index i flips iff Philox4x32-10(counter = (i mod 2^32, i div 2^32, b div 4, 0), key = (seed mod 2^32,
    seed div 2^32))[b mod 4] < min(floor(p * 2^32), 2^32). ``offsets``: global indices (Python ints or int64);
    ``bits``: the attackable bit positions. Returns int64 masks, one per index."""
    import math

    import torch

    from bitbench.kernels import philox4x32_10

    m32 = (1 << 32) - 1
    t = min(int(math.floor(p * 4294967296.0)), 1 << 32)
    idx = torch.as_tensor(offsets, dtype=torch.int64).reshape(-1)
    c0, c1 = idx & m32, idx >> 32
    key = torch.tensor([seed & m32, seed >> 32], dtype=torch.int64)
    mask = torch.zeros_like(idx)
    for b in bits:
        counter = torch.stack([c0, c1, torch.full_like(c0, b // 4), torch.zeros_like(c0)], -1)
        r = philox4x32_10(counter, key)[:, b % 4]
        mask |= (r < t).to(torch.int64) << b
    return mask


@pytest.fixture(scope="session")
def philox_mask():
    """The reference flip rule as a function ``philox_mask(offsets, seed, p, bits) -> int64 masks``."""
    return _philox_mask
