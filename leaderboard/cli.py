"""Command-line functions for ``python -m benchmark submit|leaderboard`` (and ``python -m bitbench.leaderboard.cli``).

    submit <result files...> [--name NAME] [--citation TEXT] [--link URL] [--entries DIR] [--suite-file TOML]
           [--checkpoint FILE]
    leaderboard [--suite NAME] [--out FILE] [--entries DIR] [--plots DIR] [--html DIR] [--configs DIR] [--check]

Errors print one message on stderr and return 2 (a missing or empty entries folder included: nothing is written).
``leaderboard --check [--plots DIR]`` writes nothing and returns 1 when the output file is not what the entries
generate, with the same plot links, or a linked plot is missing (for CI: "LEADERBOARD.md is stale").
``leaderboard --html DIR`` writes the static website (:mod:`.site`) into DIR instead of the markdown (both with an
explicit ``--out`` or ``--plots``); with ``--check`` it checks DIR instead.
"""

from __future__ import annotations

import argparse
import sys

from bitbench.configs.entry import EntryError
from bitbench.configs.errors import UsageError
from bitbench.configs.suite import SuiteError

__all__ = ["add_submit_arguments", "run_submit", "add_leaderboard_arguments", "run_leaderboard", "main"]


def add_submit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("result_files", nargs="+", metavar="RESULT_FILE",
                        help="harness result records (JSON), one per attack/rate, same suite/model/defense; also "
                             "tolerable-rate analyses (tolerable.json files of `run --attack tolerable:...`)")
    parser.add_argument("--name", default=None, help="row name, also the file name (default: <model>-<defense>)")
    parser.add_argument("--citation", default=None, help="how to cite the defense")
    parser.add_argument("--link", default=None, help="URL of the paper or code")
    parser.add_argument("--entries", default=None, metavar="DIR",
                        help="entries folder (default: leaderboard/entries of this package)")
    parser.add_argument("--suite-file", default=None, metavar="TOML",
                        help="suite file (default: configs/<suite>.toml of the records' suite)")
    parser.add_argument("--checkpoint", action="append", default=None, metavar="FILE",
                        help="the weights file (state dict) of a model the records were measured on (repeatable: one "
                             "per model): the entry names it with its SHA-256, so that `python -m benchmark run "
                             "--entry` can re-run the attacks on it; without, the entry says it is not re-evaluable")
    return parser


def add_leaderboard_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--suite", action="append", default=None, metavar="NAME",
                        help="only this suite (repeatable; default: every suite with entries)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="markdown file to write (default: LEADERBOARD.md in the current folder, unless only "
                             "--html is given); '-' = stdout")
    parser.add_argument("--entries", default=None, metavar="DIR",
                        help="entries folder (default: leaderboard/entries of this package)")
    parser.add_argument("--plots", default=None, metavar="DIR",
                        help="also write <DIR>/<suite>.png (needs matplotlib) and link them from the markdown")
    parser.add_argument("--html", default=None, metavar="DIR",
                        help="write the static website (index, one page per suite with sortable tables and SVG "
                             "plots, one page per entry; no server, nothing fetched) into DIR")
    parser.add_argument("--configs", default=None, metavar="DIR",
                        help="folder of suite TOML files (default: the configs package)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if --out (with --plots: and its plot links and files) differs "
                             "from what the entries generate")
    return parser


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def run_submit(args: argparse.Namespace, weights_digest=None) -> int:
    """``weights_digest(path) -> digest of the weights in a state-dict file``: matches ``--checkpoint`` files to the
    records' models (the benchmark's command line passes one; the leaderboard itself needs no torch)."""
    from .entries import submit

    try:
        path = submit(args.result_files, name=args.name, citation=args.citation, link=args.link,
                      out_dir=args.entries, suite_file=args.suite_file, checkpoints=args.checkpoint or (),
                      weights_digest=weights_digest)
    except (EntryError, SuiteError) as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}".lstrip(": "))
    print(f"wrote {path}")
    return 0


def _linked_plots_dir(out: str) -> str | None:
    """The folder of the plots that the markdown file ``out`` links (``![...](DIR/<suite>.png)``), as a path from
    the current folder; None when it links none (or cannot be read)."""
    import os
    import re

    try:
        with open(out, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    dirs = sorted({os.path.dirname(m) for m in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", text)})
    if len(dirs) != 1 or not dirs[0]:
        return None
    return os.path.normpath(os.path.join(os.path.dirname(out), dirs[0]))


def run_leaderboard(args: argparse.Namespace) -> int:
    from .generate import check_leaderboard, generate_markdown, write_leaderboard
    from .site import check_site, write_site

    html = getattr(args, "html", None)
    markdown = html is None or args.out is not None or args.plots is not None
    if args.out is None:
        args.out = "LEADERBOARD.md"
    try:
        if html is not None:
            if args.out == "-" and markdown:
                return _fail("--html cannot be combined with --out - (give a file or leave --out out)")
            if args.check:
                problems = check_site(html, args.entries, args.suite, configs_dir=args.configs)
                if problems:
                    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
                    print(f"the site in {html} is stale ({shown}): regenerate it with "
                          f"`python -m benchmark leaderboard --html {html}`", file=sys.stderr)
                    return 1
                print(f"the site in {html} is up to date")
            else:
                site = write_site(html, args.entries, args.suite, configs_dir=args.configs)
                print(f"wrote {site / 'index.html'}")
            if not markdown:
                return 0
        if args.check:
            problems = check_leaderboard(args.out, args.entries, args.suite, configs_dir=args.configs,
                                         plots_dir=args.plots)
            if problems:
                plots = args.plots or _linked_plots_dir(args.out)  # never advise dropping the file's plot links
                again = " ".join(["python -m benchmark leaderboard", "--out", args.out]
                                 + (["--plots", plots] if plots else []))
                note = (f" (it links plots in {plots}: check with --plots {plots} to compare them too)"
                        if plots and not args.plots else "")
                print(f"{args.out} is stale ({'; '.join(problems)}): regenerate it with `{again}`{note}",
                      file=sys.stderr)
                return 1
            print(f"{args.out} is up to date" + (f" (plots in {args.plots})" if args.plots else ""))
            return 0
        if args.out == "-":
            if args.plots:
                return _fail("--plots cannot be combined with --out - (plots are files next to the markdown)")
            sys.stdout.write(generate_markdown(args.entries, args.suite, configs_dir=args.configs))
            return 0
        path = write_leaderboard(args.out, args.entries, args.suite, configs_dir=args.configs,
                                 plots_dir=args.plots)
    except UsageError as e:  # EntryError, SuiteError, SiteError
        return _fail(str(e))
    except ImportError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}".lstrip(": "))
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bitbench.leaderboard.cli",
                                     description="Bit error robustness leaderboard: submit entries, generate tables.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_submit_arguments(sub.add_parser("submit", help="turn result records into a leaderboard entry"))
    add_leaderboard_arguments(sub.add_parser("leaderboard", help="generate LEADERBOARD.md (and plots) or the "
                                                                 "website (--html)"))
    args = parser.parse_args(argv)
    return run_submit(args) if args.command == "submit" else run_leaderboard(args)


if __name__ == "__main__":
    sys.exit(main())
