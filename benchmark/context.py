"""What every part of a run shares: the suite, the options, the device, the processes, the dataset, the inputs by
content, messages and artefact locks (:class:`RunContext`). The deployer (:mod:`.deployment`), the record store
(:mod:`.records`) and the harness (:mod:`.harness`) each hold one.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import sha256_file
from bitbench.configs.lock import FileLock
from bitbench.configs.suite import Suite

from .data import load_dataset, reads_local_files
from .distributed import DistContext

__all__ = ["RunOptions", "RunContext", "default_cache_dir", "git_revision", "device_name", "resolve_device", "slug"]


def default_cache_dir() -> str:
    """``$BITBENCH_CACHE``, else ``$XDG_CACHE_HOME/bitbench``, else ``~/.cache/bitbench``."""
    if os.environ.get("BITBENCH_CACHE"):
        return os.environ["BITBENCH_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bitbench")


_GIT_REV: list = []


def git_revision() -> str | None:
    """The git revision of the code (None when not in a git checkout)."""
    if not _GIT_REV:
        here = os.path.dirname(os.path.abspath(__file__))
        try:
            rev = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=5).stdout.strip() or None
            if rev:
                dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                       capture_output=True, text=True, timeout=5).stdout.strip()
                rev += "-dirty" if dirty else ""
        except (OSError, subprocess.SubprocessError):
            rev = None
        _GIT_REV.append(rev)
    return _GIT_REV[0]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UsageError(f"invalid device {name!r}; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return dev


def slug(spec: str) -> str:
    """A readable, bounded file-name part of a spec (not injective on its own: file names add a hash of the spec)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-=") else "_"
                   for c in spec.replace(":", "__").replace(",", "_"))[:80].lstrip(".-")


@dataclass
class RunOptions:
    cache_dir: str = field(default_factory=default_cache_dir)
    results_dir: str = "results"
    device: str = "auto"
    progress: bool = True
    retrain: bool = False       # ignore a cached checkpoint
    rerun: bool = False         # ignore matching result records
    data_dir: str | None = None
    write_results: bool = True
    log = None                  # callable(str) for messages (stderr by default)


class RunContext:
    """The shared state of one run (module docstring)."""

    def __init__(self, suite: Suite, options: RunOptions | None = None, dist: DistContext | None = None, *,
                 dataset=None):
        self.suite = suite
        self.opt = options or RunOptions()
        self.dist = dist or DistContext()
        self.device = resolve_device(self.opt.device)
        self._dataset = dataset
        self.given_dataset = dataset is not None   # given as an object (the API's tensors): not reloadable elsewhere
        self._digests: dict[tuple, str] = {}
        self.input_files: dict[str, dict] = {"model": {}, "cell": {}}
        where = ("--data-dir " + self.opt.data_dir if self.opt.data_dir else
                 f"data_dir = {suite.data_dir!r} in the suite file" if suite.data_dir else None)
        if where and dataset is None and not reads_local_files(suite.dataset):
            raise UsageError(f"{where}: dataset {suite.dataset!r} of suite {suite.name!r} is built in and reads "
                             "no local files, so the folder would be ignored; drop it, or use a suite whose "
                             "dataset is read from files (mnist, cifar10, cifar100, or dataset = \"npz\"/\"h5\" "
                             "in a suite file)")

    # -- messages --------------------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not self.dist.is_main:
            return
        if self.opt.log is not None:
            self.opt.log(msg)
        elif self.opt.progress:
            print(msg, file=sys.stderr)

    def warn(self, msg: str) -> None:
        """A problem the run works around (a damaged file it does not use): shown even without progress output."""
        if not self.dist.is_main:
            return
        if self.opt.log is not None:
            self.opt.log(f"warning: {msg}")
        else:
            print(f"warning: {msg}", file=sys.stderr)

    @contextmanager
    def artefact_lock(self, path: str, what: str):
        """Hold ``<path>.lock`` while an artefact is looked up and computed (rank 0 for all ranks under torchrun)."""
        lock = FileLock(path + ".lock", what, log=self.log).acquire() if self.dist.is_main else None
        self.dist.barrier()
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    # -- data ------------------------------------------------------------------------------------------------------
    @property
    def dataset(self):
        if self._dataset is None:
            self._dataset = load_dataset(self.suite.dataset, self.opt.data_dir or self.suite.data_dir,
                                         n_eval=self.suite.n_eval)
        return self._dataset

    def data_digest(self, *splits: str) -> str:
        if splits not in self._digests:
            self._digests[splits] = self.dataset.digest(*splits)
        return self._digests[splits]

    def eval_split(self) -> str:
        """``test[0:N]``: the first N inputs of the dataset's test split (its rule is in ``eval_split_rule``)."""
        return f"test[0:{self.dataset.test_y.shape[0]}]"

    # -- inputs by content -----------------------------------------------------------------------------------------
    def add_input_file(self, kind: str, role: str, path) -> str:
        """Declare a file behind every model (``kind='model'``, e.g. a user's checkpoint) or every cell
        (``kind='cell'``): its content digest joins :meth:`input_digests` under ``role``. Returns the digest."""
        if kind not in self.input_files:
            raise ValueError(f"kind must be 'model' or 'cell', got {kind!r}")
        try:
            digest = "sha256:" + sha256_file(path)
        except OSError as e:
            raise UsageError(f"{role} {path}: cannot read it ({e.strerror or e})") from None
        self.input_files[kind][role] = digest
        return digest

    def input_digests(self, kind: str, obj=None) -> dict:
        """``{role: "sha256:..."}``: content digests of the inputs behind the numbers, which enter the configuration
        hashes instead of any path. ``kind='model'``: the training data, declared files and files named by the
        defense ``obj``'s parameters; ``kind='cell'``: the evaluation and attacker data, declared files and files
        named by the attack ``obj``'s parameters (an error map's ``file``). Objects declare their files with
        ``input_digests()``."""
        if kind == "model":
            out, prefix = {"data.train": self.data_digest("train")}, "defense"
        else:
            out, prefix = {"data.eval": self.data_digest("test"), "data.attack": self.data_digest("attack")}, "attack"
        out.update(self.input_files[kind])
        own = getattr(obj, "input_digests", None)
        for k, v in (own() if own is not None else {}).items():
            out[f"{prefix}.{k}"] = v
        return out

    @staticmethod
    def hashed_params(obj, digests: dict, prefix: str) -> dict:
        """``obj.params`` with every file parameter replaced by its content digest (never hashed by path)."""
        return {k: digests.get(f"{prefix}.{k}", v) for k, v in dict(getattr(obj, "params", {})).items()}
