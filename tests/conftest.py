"""Shared pytest configuration."""
import pytest


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
