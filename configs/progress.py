"""Progress output on stderr that suits both a terminal and a log file.

On a terminal a tqdm bar redraws in place; when stderr is not a terminal (a log, a CI job, a pipe) redraws would
flood it with carriage-return fragments, so one plain line is printed per finished unit instead (an epoch, a
benchmark cell). tqdm is imported only for the terminal case.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """A progress display for ``total`` steps of one unit of work named ``desc``.

    ``update(n)`` advances it, ``set_postfix(k=v)`` shows figures (loss, accuracy), ``close()`` ends it: on a
    terminal the bar disappears; elsewhere one line ``desc: k=v ... (seconds)`` is printed.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", *, enabled: bool = True, file=None):
        self.file = file if file is not None else sys.stderr
        self.desc, self.total, self.unit = desc, total, unit
        self.enabled = enabled
        self.done = 0
        self.postfix: dict = {}
        self._t0 = time.perf_counter()
        self._bar = None
        if enabled and _is_tty(self.file):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=self.file)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def set_postfix(self, **kw) -> None:
        self.postfix.update(kw)
        if self._bar is not None:
            self._bar.set_postfix(**kw)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled:
            figures = " ".join(f"{k}={v}" for k, v in self.postfix.items())
            line = f"{self.desc}: {self.done}/{self.total} {self.unit}" + (f", {figures}" if figures else "")
            print(f"{line} ({time.perf_counter() - self._t0:.1f} s)", file=self.file, flush=True)
        self.enabled = False  # closing twice prints once

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_tty(f) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False
