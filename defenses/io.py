"""Atomic torch checkpoints (the plain-file writers are the core's, :mod:`bitbench.configs.fileio`)."""

from __future__ import annotations

from bitbench.configs.fileio import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save"]


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through a temporary file in the same folder, then an atomic rename."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))
