"""Convert leaderboard entries of format /1 that were copied from a paper (``reported_by: "paper"``) to format /2.

Rows measured by the benchmark cannot be converted (format /2 carries every model's per-pattern values and their
statistics): submit their result records again. Usage: ``python scripts/migrate_paper_entries.py FILE...``
(files are rewritten in place, atomically; an entry that is not a /1 paper row is left alone and named).
"""
from __future__ import annotations

import json
import sys

from bitbench.configs.entry import ENTRY_FIELDS, FORMAT, validate_entry
from bitbench.leaderboard.entries import write_entry


def migrate(old: dict) -> dict:
    results = []
    for r in old["results"]:
        new = {"attack": r["attack"], "rate": r["rate"]}
        if r.get("flips") is not None:
            new["flips"] = r["flips"]
        new["summary"] = {} if r.get("rerr") is None else {"rerr": {"mean": r["rerr"]["mean"]}}
        if r.get("note"):
            new["note"] = r["note"]
        results.append(new)
    entry = {**{k: v for k, v in old.items() if k not in ("seeds", "checkpoint", "results")}, "format": FORMAT,
             "train_seeds": [old.get("seeds", {}).get("train")], "per_model_clean_err": None, "metrics": {},
             "pattern_seeds": None, "results": results, "checkpoints": []}
    return {f.name: entry[f.name] for f in ENTRY_FIELDS if f.name in entry}


def main(paths) -> int:
    bad = 0
    for p in paths:
        with open(p, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("format") != "bitbench.leaderboard_entry/1" or old.get("reported_by") != "paper":
            print(f"{p}: not a /1 paper row, left as it is", file=sys.stderr)
            bad += 1
            continue
        entry = migrate(old)
        validate_entry(entry)
        write_entry(entry, p)
        print(f"{p}: converted")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
