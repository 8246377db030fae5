"""Regenerate every published number from scratch: suites -> records -> entries (with checkpoints) -> tables.

    python scripts/regenerate.py [--suite default] [--suite lm] [--work DIR] [--reuse]
    python scripts/regenerate.py --verify [--suite default] ...    # re-run every shipped row, nothing regenerated

For each suite (default: ``default``, ``vit`` and ``lm``), in a fresh work folder (cache and results; ``--reuse`` keeps a
previous work folder's):

1. ``python -m benchmark suite S`` (every defense x attack x rate; the records land in ``WORK/results/S``) and its
   printed tables (``WORK/S.txt``);
2. ``python -m benchmark train --suite S --save-weights`` (loads the cached models) -> one state dict per trained
   model, stored content-addressed as ``leaderboard/entries/S/weights/<sha256[:16]>.pt`` (models shared by several
   defenses, e.g. ``normal``/``float32``/``bfloat16``, are stored once);
3. one entry per (model, defense) of the records through ``python -m benchmark submit`` with those checkpoints
   (so ``python -m benchmark run --entry FILE`` re-evaluates every row); the suite's earlier measured entries and
   unreferenced weights are removed first, rows reported by a paper are kept;
4. ``LEADERBOARD.md`` and the plots (``python -m benchmark leaderboard --plots leaderboard/plots``);
5. the README's table between ``<!-- bitbench:table S begin -->`` and ``<!-- bitbench:table S end -->`` (where the
   README has such markers) and the suite's section of ``docs/results.md`` (between ``<!-- bitbench:results S
   begin/end -->``; the other suites' sections are kept), from the suite's printed tables.

``--verify`` re-runs every shipped measured row of the suites with ``python -m benchmark run --entry FILE`` in a
fresh cache (the entry's checkpoints, nothing trained) and writes the verdicts into the suite's "re-evaluated"
section of ``docs/results.md``; it exits 1 when a row was not reproduced exactly.

Every number comes from the records through the package's own commands; nothing is edited by pattern matching.
Run it from a clean checkout (records carry the git revision), in the project's environment.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = {
    "default": "Stutz et al., Bit Error Robustness for Energy-Efficient DNN Accelerators, MLSys 2021 "
               "(arXiv 2006.13977); reproduced by bitbench",
}
LINK = "https://arxiv.org/abs/2006.13977"
MAX_WEIGHTS_BYTES = 4 << 20  # a shipped checkpoint stays small: the package carries them


def bench(*args, capture: bool = False) -> str:
    cmd = [sys.executable, "-m", "benchmark", *map(str, args)]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, cwd=ROOT, check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return p.stdout if capture else ""


def entry_name(model: str, defense: str) -> str:
    """``<model>-<defense>`` with the spec's separators as dashes (``randbet:p=0.1`` -> ``lenet-randbet-p0.1``)."""
    out, dash = [], False
    for c in defense.lower().replace("granularity=", "").replace("=", ""):
        if c.isascii() and (c.isalnum() or c == "."):
            out.append(c)
            dash = False
        elif not dash:
            out.append("-")
            dash = True
    return f"{model}-{''.join(out).strip('-')}"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def store_weights(rows: list, weights_dir: Path) -> dict:
    """``{(defense, seed): shipped path}``: the saved state dicts, stored under their digest."""
    weights_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for row in rows:
        src = Path(row["weights"])
        if src.stat().st_size > MAX_WEIGHTS_BYTES:
            sys.exit(f"{src}: {src.stat().st_size} bytes, more than the {MAX_WEIGHTS_BYTES} a shipped checkpoint may "
                     "have; publish this suite's entries without checkpoints")
        dst = weights_dir / f"{sha256(src)[:16]}.pt"
        if not dst.exists():
            shutil.copyfile(src, dst)
        out[(row["defense"], int(row["seed"]))] = dst
    return out


def records_by_row(results: Path) -> dict:
    """``{(model, defense): [record paths]}`` of a suite's result folder (read as JSON, in path order)."""
    groups = collections.defaultdict(list)
    for path in sorted(results.rglob("*.json")):
        rec = json.loads(path.read_text())
        groups[(rec["model"], rec["defense"])].append(path)
    return groups


def clear_measured_entries(entries_dir: Path) -> None:
    for path in entries_dir.glob("*.json"):
        if json.loads(path.read_text()).get("reported_by") != "paper":
            path.unlink()


def drop_unreferenced_weights(entries_dir: Path) -> None:
    used = set()
    for path in entries_dir.glob("*.json"):
        for ck in json.loads(path.read_text()).get("checkpoints") or []:
            used.add((entries_dir / ck["path"]).resolve())
    for path in (entries_dir / "weights").glob("*.pt"):
        if path.resolve() not in used:
            path.unlink()


def fill_markers(text: str, suite: str, table: str) -> str:
    begin, end = f"<!-- bitbench:table {suite} begin -->", f"<!-- bitbench:table {suite} end -->"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        return text
    return text[:i + len(begin)] + "\n```\n" + table.strip("\n") + "\n```\n" + text[j:]


RESULTS_HEAD = """# Results

Generated by `python scripts/regenerate.py` from the records of each suite (do not edit by hand). Each table is
what `python -m benchmark suite NAME` prints: the mean over the suite's trained models and fixed chips, with the
95% interval of the crossed bootstrap over models and chips ([Statistics](statistics.md)); below each random-error
table, the defenses ordered at each rate (`<` significant, `≈` not separable). Rows whose intervals overlap are
not separable.
"""


def results_section(name: str, text: str) -> str:
    from bitbench.configs.suite import load_suite

    suite = load_suite(name)
    return "\n".join([f"<!-- bitbench:results {name} begin -->", f"## `{name}`", "", suite.description + ".", "",
                      f"Reproduce: `python -m benchmark suite {name}`; re-evaluate one published row from its "
                      f"checkpoints: `python -m benchmark run --entry leaderboard/entries/{name}/<row>.json`. "
                      f"Regenerated on {datetime.date.today().isoformat()}.", "",
                      "```", text.strip("\n"), "```", f"<!-- bitbench:results {name} end -->"])


def results_page(page: str, outputs: dict) -> str:
    """``page`` (docs/results.md, or "") with the sections of the regenerated suites replaced or appended."""
    page = page or RESULTS_HEAD
    for name, text in outputs.items():
        begin, end = f"<!-- bitbench:results {name} begin -->", f"<!-- bitbench:results {name} end -->"
        i, j = page.find(begin), page.find(end)
        section = results_section(name, text)
        if i >= 0 and j > i:
            page = page[:i] + section + page[j + len(end):]
        else:
            page = page.rstrip("\n") + "\n\n" + section + "\n"
    return page


def verify(suites: list, work: Path) -> int:
    """``run --entry`` on every shipped measured row of ``suites``; the verdicts go into docs/results.md."""
    failed = 0
    page = ROOT / "docs" / "results.md"
    text = page.read_text() if page.exists() else RESULTS_HEAD
    for s in suites:
        lines = []
        for path in sorted((ROOT / "leaderboard" / "entries" / s).glob("*.json")):
            if json.loads(path.read_text()).get("reported_by") == "paper":
                continue
            cmd = [sys.executable, "-m", "benchmark", "run", "--entry", str(path), "--no-progress",
                   "--cache-dir", str(work / "cache"), "--results-dir", str(work / "results")]
            print("+", " ".join(cmd), file=sys.stderr, flush=True)
            p = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
            verdict = next((ln for ln in p.stdout.splitlines()[::-1] if ln.startswith("entry ")),
                           f"entry {path.stem}: exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
            failed += p.returncode != 0
            lines.append(verdict)
        begin, end = f"<!-- bitbench:verified {s} begin -->", f"<!-- bitbench:verified {s} end -->"
        block = "\n".join([begin, f"`python scripts/regenerate.py --verify --suite {s}` "
                            f"({datetime.date.today().isoformat()}): `python -m benchmark run --entry FILE` on "
                            "every shipped row, from its checkpoints in a fresh cache:", "", "```", *lines, "```", end])
        i, j = text.find(begin), text.find(end)
        if i >= 0 and j > i:
            text = text[:i] + block + text[j + len(end):]
        else:
            k = text.find(f"<!-- bitbench:results {s} end -->")
            if k < 0:
                text = text.rstrip("\n") + "\n\n" + block + "\n"
            else:
                k += len(f"<!-- bitbench:results {s} end -->")
                text = text[:k] + "\n\n" + block + text[k:]
    page.write_text(text)
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", action="append", default=None, help="suite to regenerate (repeatable; default: "
                    "default, vit and lm)")
    ap.add_argument("--work", default=None, help="work folder (cache, results, outputs; default: a new temporary one)")
    ap.add_argument("--reuse", action="store_true", help="reuse the work folder's cache and records")
    ap.add_argument("--verify", action="store_true", help="only re-run every shipped row of the suites (run --entry)")
    args = ap.parse_args(argv)
    suites = args.suite or ["default", "vit", "lm"]
    work = Path(args.work or tempfile.mkdtemp(prefix="bitbench-regen-")).resolve()
    if args.verify:
        work.mkdir(parents=True, exist_ok=True)
        return verify(suites, work)
    if work.exists() and not args.reuse and any(work.iterdir()):
        sys.exit(f"{work} is not empty: give --reuse to continue from it, or another folder")
    work.mkdir(parents=True, exist_ok=True)
    cache, results = work / "cache", work / "results"
    common = ["--no-progress", "--cache-dir", cache, "--results-dir", results]
    outputs = {}
    for s in suites:
        text = bench("suite", s, *common, capture=True)
        (work / f"{s}.txt").write_text(text)
        outputs[s] = text
        saved = work / "weights" / s
        rows = json.loads(bench("train", "--suite", s, "--save-weights", saved, "--format", "json", *common,
                                capture=True))
        entries_dir = ROOT / "leaderboard" / "entries" / s
        entries_dir.mkdir(parents=True, exist_ok=True)
        clear_measured_entries(entries_dir)
        shipped = store_weights(rows, entries_dir / "weights")
        for (model, defense), paths in sorted(records_by_row(results / s).items()):
            cks = [p for (d, _seed), p in sorted(shipped.items()) if d == defense]
            extra = [a for ck in cks for a in ("--checkpoint", ck)]
            cite = CITATION.get(s, "bitbench")
            bench("submit", *paths, "--name", entry_name(model, defense), "--citation", cite, "--link", LINK, *extra)
        drop_unreferenced_weights(entries_dir)
    bench("leaderboard", "--plots", "leaderboard/plots")
    readme = (ROOT / "README.md").read_text()
    for s, text in outputs.items():
        readme = fill_markers(readme, s, text.split("\n\n")[0])
    (ROOT / "README.md").write_text(readme)
    page = ROOT / "docs" / "results.md"
    page.write_text(results_page(page.read_text() if page.exists() else "", outputs))
    print(f"regenerated {', '.join(suites)} from {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
