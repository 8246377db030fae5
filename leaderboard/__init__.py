"""Leaderboard: one JSON entry file per row (``leaderboard/entries/<suite>/<name>.json``), validated against its
suite's protocol; markdown tables and plots generated as a pure function of those files (RobustBench style).

    from bitbench.leaderboard import submit, generate_markdown
    path = submit(["results/default/lenet/randbet/random_p0.01.json", ...], citation="...")
    text = generate_markdown()               # every suite folder of leaderboard/entries
    write_site("site/")                      # the static website (site/index.html)

No torch and nothing from the harness: this package reads result records and suite TOML files only.
The entry format is the core's (bitbench.configs.entry) and leaderboard/README.md.
"""

from bitbench.configs.entry import FORMAT, EntryError, validate_entry  # noqa: F401
from bitbench.configs.suite import Suite, SuiteError, list_suites, load_suite  # noqa: F401
from .entries import (DEFAULT_ENTRIES_DIR, entry_from_records, load_entries, load_entry, load_record,  # noqa: F401
                      submit, write_entry)
from .generate import generate_markdown, ranked_entries, write_leaderboard  # noqa: F401
from .site import build_site, write_site  # noqa: F401


def write_plots(*args, **kwargs):
    """See :func:`leaderboard.plot.write_plots` (needs matplotlib)."""
    from .plot import write_plots as _write_plots

    return _write_plots(*args, **kwargs)


__all__ = ["FORMAT", "EntryError", "SuiteError", "Suite", "load_suite", "list_suites",
           "validate_entry", "DEFAULT_ENTRIES_DIR", "load_entry", "load_entries", "load_record", "entry_from_records",
           "submit", "write_entry", "generate_markdown", "ranked_entries", "write_leaderboard", "write_plots",
           "build_site", "write_site"]
