"""Command line: ``python -m benchmark {run,suite,list,train,info,perf,submit,leaderboard}``.

Exit codes: 0 success, 2 bad usage (unknown names, invalid values, missing data files, incompatible options, a
full disk), 1 an unexpected failure (a bug: the traceback), 3 ``run --entry`` ran but did not reproduce every result
of the entry (the verdict says which differ), 130 interrupted (finished cells are kept; a rerun resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys

__all__ = ["main", "build_parser", "EXIT_NOT_REPRODUCED"]

EXIT_NOT_REPRODUCED = 3  # run --entry: some result of the entry differs (or none was compared)


from bitbench.configs.errors import UsageError
from bitbench.configs.fileio import DiskFullError, check_writable, safe_name
from bitbench.configs.spec import SpecError, parse_rate

from . import builtin_entries  # noqa: F401  (the built-in defenses, attacks, ... are found by every lookup)


def _rates(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(parse_rate(part))
        except SpecError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if not out:
        raise argparse.ArgumentTypeError("no rates given")
    return out


def _int_at_least(lo: int, hi: int | None = None):
    """argparse type: an integer >= lo (and <= hi)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo or (hi is not None and v > hi):
            what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
            what += f" of at most {hi}" if hi is not None else ""
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _seed_list(text: str) -> list[int]:
    """argparse type: comma-separated distinct training seeds >= 0."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        out.append(_nonneg_int(part))
    if not out or len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0 separated by commas, got {text!r}")
    return out


def _common(p: argparse.ArgumentParser, *, suite_positional: bool = False) -> None:
    if not suite_positional:
        p.add_argument("--suite", default="default",
                       help="packaged suite name or TOML path (default: the embedded 'default' suite)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--data-dir", default=None, help="folder with a local dataset (MNIST IDX, CIFAR batches, HDF5)")
    p.add_argument("--cache-dir", default=None, help="checkpoint cache (default: $BITBENCH_CACHE or "
                                                     "~/.cache/bitbench)")
    p.add_argument("--results-dir", default="results", help="where result records are written (default ./results)")
    p.add_argument("--epochs", type=_nonneg_int, default=None, help="override the suite's training epochs")
    p.add_argument("--patterns", type=_positive_int, default=None,
                   help="override the number of bit-error patterns per rate")
    p.add_argument("--n-eval", type=_positive_int, default=None,
                   help="override the number of evaluation images (the first N of the test split)")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table",
                   help="output format on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or messages on stderr")
    p.add_argument("--retrain", action="store_true", help="ignore cached checkpoints and train again")
    p.add_argument("--rerun", action="store_true", help="recompute results even if matching records exist")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_int_at_least(1, 1000), default=None, metavar="N",
                       help="train N models per defense (training seeds 0..N-1) instead of the suite's train_seeds")
    seeds.add_argument("--train-seeds", type=_seed_list, default=None, metavar="LIST",
                       help="the training seeds of the models, e.g. 0,3,7 (instead of the suite's)")


def _metrics_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", action="append", default=None, metavar="SPEC",
                   help="also measure this metric on every pattern (repeatable; see `list metrics`; e.g. changed, "
                        "topk_err:k=5, perplexity, or a plug-in's)")
    p.add_argument("--std", action="store_true",
                   help="show mean ± sd (spread over chips) and the model and chip spreads instead of mean [95%% CI]")
    p.add_argument("--outcomes", action="store_true",
                   help="also show the outcome classes per pattern: masked, silent data corruption (SDC), detected or "
                        "unrecoverable (DUE)")


def _energy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--voltage-profile", default=None, metavar="FILE|DIR",
                   help="turn each tolerable rate (--attack tolerable:budget=...) into the lowest safe supply voltage "
                        "V_min and the energy saved: a curve file (CSV: voltage_v, ber or ber_01 + ber_10, optional "
                        "energy), a folder of profiled error maps (one .npz per voltage, evaluated on their cells), "
                        "or a packaged profile (example_sram: synthetic); docs/energy.md")
    p.add_argument("--nominal-voltage", type=float, default=None, metavar="VOLTS",
                   help="the voltage savings are measured against (default: the profile's nominal_voltage_v)")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="the architecture instead of the suite's: a registered model with options (vit, "
                        "vit:depth=4), or your builder: package.module:function or path/to/file.py:function "
                        "(options after a second colon)")
    p.add_argument("--dataset", default=None, metavar="SPEC",
                   help="the dataset instead of the suite's (see `list datasets`; local files: --data-dir)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="python -m benchmark",
                                 description="Bit-error robustness benchmark for quantized neural networks.")
    ap.add_argument("--version", action="version", version=f"bitbench {__version__}",
                    help="print the package version and exit")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="train/load defended models, attack them, print the robust-error table",
                       description="Train (or load) each defended model, run each attack, print RErr.")
    p.add_argument("--defense", action="append", default=None,
                   help="defense spec, e.g. randbet or randbet:p=0.02,w_max=0.05 (repeatable; default: the "
                        "suite's defenses)")
    p.add_argument("--attack", action="append", default=None,
                   help="attack spec, e.g. random_p0.01, random_msb_p0.01, bfa, bfa_n20, tbfa:target=3, budget_e40 "
                        "(repeatable)")
    p.add_argument("--rates", type=_rates, default=None,
                   help="rate sweep shorthand: comma-separated rates (0.01 or 1%%) -> random_p<rate> attacks")
    _model_options(p)
    p.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="evaluate the weights in this state-dict file (torch.save(model.state_dict(), FILE)) on the "
                        "model instead of training it; --defense then names only the storage format (normal, "
                        "rquant, quant:...)")
    p.add_argument("--checkpoint-sha256", default=None, metavar="HEX",
                   help="refuse the --checkpoint file unless its SHA-256 is this (64 hex digits): pins the exact "
                        "bytes")
    p.add_argument("--entry", default=None, metavar="FILE",
                   help="re-run the attacks of a leaderboard entry on the checkpoints it names (suite, model and "
                        "defense come from the entry; --checkpoint gives another location of the file of an entry "
                        "of one model) and compare every number; prints the verdict after the table and exits with "
                        "3 when a result was not reproduced")
    _energy_options(p)
    _metrics_option(p)
    _common(p)

    p = sub.add_parser("suite", help="run the full grid of a suite and print the comparison table")
    p.add_argument("suite", help="packaged suite name (default, mnist, cifar10, cifar100) or configs/<name>.toml")
    _energy_options(p)
    _metrics_option(p)
    _common(p, suite_positional=True)

    p = sub.add_parser("train", help="train (or load) defended models and report their clean error")
    p.add_argument("--defense", action="append", default=None, help="defense spec (repeatable)")
    p.add_argument("--save-quantized", default=None, metavar="DIR",
                   help="also save each quantized model (integer codes + contexts) into DIR")
    p.add_argument("--save-weights", default=None, metavar="DIR",
                   help="also save each trained model's float weights (a state dict, for --checkpoint and "
                        "`submit --checkpoint`) into DIR")
    p.add_argument("--seed", type=_nonneg_int, default=None, metavar="S",
                   help="train only the model of training seed S")
    _model_options(p)
    _common(p)

    p = sub.add_parser("profile", help="vulnerability profile: RErr when only one layer and one bit position take "
                                       "errors (table and heatmap)",
                       description="Run the attack restricted to each (memory region, layer, bit position) and print "
                                   "the RErr of each as a layers x bits table; write a heatmap (SVG, and PNG with "
                                   "matplotlib) and the profile's JSON. Every cell is a cached result record. "
                                   "See docs/vulnerability.md.")
    p.add_argument("--defense", required=True, help="defense spec, e.g. rquant or rquant+secded (one)")
    p.add_argument("--attack", default=None,
                   help="random-error spec to profile: random_p0.1, random_p0.1:meta=exposed, random_msb_p0.1, "
                        "act_random_p0.01 (default: random_p<the suite's headline rate>)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for heatmap.svg, heatmap.png and profile.json (default: "
                        "<results-dir>/profiles/<suite>/<model>/<defense>/<attack>)")
    p.add_argument("--plot", choices=("all", "svg", "png", "none"), default="all",
                   help="heatmaps to write: all (SVG, and PNG when matplotlib is installed; default), svg, png, none")
    _model_options(p)
    _common(p)

    p = sub.add_parser("list", help="list defenses, protections (after '+' in a defense spec), attacks, metrics, "
                                    "datasets, models and suites")
    p.add_argument("what", nargs="?", default="all",
                   choices=("all", "defenses", "protections", "attacks", "metrics", "datasets", "models", "suites"))
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'rand*'")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="package version, kernel backends, devices, library versions")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("perf", help="performance measurements (kernels, harness, train, attacks)")
    from . import perf

    perf.add_arguments(p)

    from bitbench.leaderboard import cli as lcli

    p = sub.add_parser("submit", help="turn result records into a validated leaderboard entry")
    lcli.add_submit_arguments(p)
    p = sub.add_parser("leaderboard", help="generate LEADERBOARD.md (and plots), or the website (--html DIR), "
                                           "from the entries")
    lcli.add_leaderboard_arguments(p)
    return ap


# -- commands ------------------------------------------------------------------------------------------------------
def _log(args):
    return None if not args.no_progress else (lambda msg: None)


def _harness(args, suite):
    from .distributed import init_from_env
    from .harness import Harness, RunOptions, default_cache_dir

    dist, device = init_from_env(args.device)
    args._dist = dist
    args.device = device

    if args.epochs is not None:
        suite = suite.replace(train=dict(suite.train, epochs=args.epochs))
    if args.patterns is not None:
        suite = suite.replace(patterns=args.patterns)
    suite = _apply_size_caps(suite, dist.is_main)
    if args.n_eval is not None:
        suite = suite.replace(n_eval=args.n_eval)
    if getattr(args, "seeds", None) is not None:
        suite = suite.replace(train_seeds=list(range(args.seeds)))
    if getattr(args, "train_seeds", None) is not None:
        suite = suite.replace(train_seeds=list(args.train_seeds))
    if getattr(args, "metric", None):
        suite = suite.replace(metrics=list(dict.fromkeys(suite.metrics + args.metric)))
    opt = RunOptions(cache_dir=args.cache_dir or default_cache_dir(), results_dir=args.results_dir,
                     device=args.device, progress=not args.no_progress, retrain=args.retrain, rerun=args.rerun,
                     data_dir=args.data_dir)
    return Harness(suite, opt, dist=dist)


#: Environment variables that cap the size of a run (the documentation examples run under them, see
#: docs/extending.md): when set, the smaller of the variable and the suite's (or the option's) value is used.
SIZE_CAPS = {"BITBENCH_DOCS_EPOCHS": ("epochs", 0), "BITBENCH_DOCS_PATTERNS": ("patterns", 1),
             "BITBENCH_DOCS_MODELS": ("models", 1)}


def _env_cap(var: str, lo: int) -> int | None:
    text = os.environ.get(var, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < lo:
        raise UsageError(f"environment variable {var}={text!r} must be an integer >= {lo} (or unset)")
    return value


def _apply_size_caps(suite, announce: bool = True):
    """The suite with its training epochs and patterns capped by :data:`SIZE_CAPS` (a note on stderr says so)."""
    from bitbench.defenses.training import TrainConfig

    for var, (what, lo) in SIZE_CAPS.items():
        cap = _env_cap(var, lo)
        if cap is None:
            continue
        if what == "epochs":
            value = suite.train.get("epochs", TrainConfig.epochs)
            if cap < value:
                suite = suite.replace(train=dict(suite.train, epochs=cap))
        elif what == "models":
            value = len(suite.train_seeds)
            if cap < value:
                suite = suite.replace(train_seeds=suite.train_seeds[:cap])
        else:
            value = suite.patterns
            if cap < value:
                suite = suite.replace(patterns=cap)
        if cap < value and announce:
            print(f"note: {var}={cap} caps the {what} of this run ({value} without it)", file=sys.stderr)
    return suite


def _override_model_dataset(args, suite):
    """The suite with ``--model`` (its options replace the suite's model options) and ``--dataset``."""
    from bitbench.configs.registries import DATASETS

    from .models import resolve_model

    if getattr(args, "model", None):
        mb = resolve_model(args.model)
        suite = suite.replace(model=mb.name, model_options=dict(mb.options))
    if getattr(args, "dataset", None):
        DATASETS.resolve(args.dataset)
        # the suite's pinned evaluation split belongs to its own dataset: another dataset is evaluated on its whole
        # evaluation split (or --n-eval); such records are not comparable with the suite's leaderboard
        suite = suite.replace(dataset=args.dataset, n_eval=None, eval_split=None)
    return suite


def _validate_specs(defenses, attacks):
    from bitbench.configs.registries import ATTACKS, DEFENSES

    for d in defenses:
        DEFENSES.resolve(d)
        DEFENSES.create(d)
    for a in attacks:
        ATTACKS.resolve(a)
        ATTACKS.create(a)


def _is_main(args) -> bool:
    d = getattr(args, "_dist", None)
    return d is None or d.is_main


def _emit(df, fmt, records, args=None):
    from .tables import render

    if args is None or _is_main(args):  # under torchrun only rank 0 prints
        print(render(df, fmt, records))


def _format_defenses(suite, given) -> tuple[list, str | None]:
    """The defenses that apply to a supplied checkpoint: the given ones, else the suite's storage formats (and a
    note naming the recipes left out)."""
    from bitbench.configs.registries import create_defense

    from .harness import is_storage_format

    if given:
        return list(given), None
    keep = [d for d in suite.defenses if is_storage_format(create_defense(d))] or ["rquant"]
    skipped = [d for d in suite.defenses if d not in keep]
    note = (f"note: {', '.join(skipped)} of suite {suite.name!r} are training recipes and do not apply to a supplied "
            f"checkpoint; evaluating the storage formats {', '.join(keep)}") if skipped else None
    return keep, note


def cmd_run(args) -> int:
    from bitbench.configs.suite import load_suite
    from .tables import run_tables

    if args.checkpoint_sha256 is not None:
        _check_pinned(args.checkpoint, args.checkpoint_sha256)
    if args.entry:
        return _run_entry(args)
    suite = _override_model_dataset(args, load_suite(args.suite))
    defenses, note = args.defense or list(suite.defenses), None
    if args.checkpoint:
        defenses, note = _format_defenses(suite, args.defense)
    attacks = list(args.attack or [])
    if args.rates:
        attacks += [f"random_p{r!r}" for r in args.rates]  # canonical rates: 0.7% and 0.007 are one attack
    if not attacks:
        attacks = suite.rate_attacks() + list(suite.attacks)
    if not defenses:
        raise UsageError(f"suite {suite.name!r} names no defenses; pass --defense")
    if not attacks:
        raise UsageError(f"suite {suite.name!r} names no rates and no attacks, so there is nothing to run; pass "
                         "--attack or --rates")
    _validate_specs(defenses, attacks)  # fail fast, before any training
    h = _harness(args, suite)
    if args.checkpoint and (args.seeds is not None or args.train_seeds is not None):
        raise UsageError("--seeds/--train-seeds train several models; --checkpoint evaluates the one model in the "
                         "file (give one of them)")
    if args.checkpoint:
        from bitbench.configs.registries import create_defense

        h.supply_checkpoint(args.checkpoint)
        for d in defenses:
            h.check_defense(create_defense(h.canonical_defense(d)))
        if note and _is_main(args):
            print(note, file=sys.stderr)
    return _run_grid(args, h, defenses, attacks,
                     lambda recs: run_tables(recs, "sd" if args.std else "ci", args.outcomes))


def _split_analyses(h, attacks) -> tuple[list, list]:
    """(ordinary attacks, analysis specs such as tolerable:budget=0.01)."""
    from .energy import is_analysis

    plain, analyses = [], []
    for a in attacks:
        (analyses if is_analysis(h.canonical_attack(a)[1]) else plain).append(a)
    return plain, analyses


def _load_voltage_profile(args, analyses):
    path = getattr(args, "voltage_profile", None)
    if path is None:
        if getattr(args, "nominal_voltage", None) is not None:
            raise UsageError("--nominal-voltage applies to a --voltage-profile; give one")
        return None
    if not analyses:
        raise UsageError("--voltage-profile turns a tolerable bit error rate into V_min and the energy saved: add "
                         "--attack tolerable:budget=0.01 (see `python -m benchmark list attacks tolerable`)")
    from bitbench.configs.voltage import load_profile

    return load_profile(path, nominal_voltage=args.nominal_voltage)


def _run_grid(args, h, defenses, attacks, tables) -> int:
    """Every (defense, attack) cell, then the analyses (tolerable rates; V_min and energy with a voltage profile);
    prints the tables."""
    from .energy import (energy_note, orderings_line, precision_table, profiled_table, run_profiled_voltages,
                         run_tolerable, tolerable_table, voltage_table)
    from .tables import render

    plain, analyses = _split_analyses(h, attacks)
    profile = _load_voltage_profile(args, analyses)  # a bad profile fails before any training
    h.preflight(defenses, plain + [h.canonical_attack(a)[1].rate_spec(h.canonical_attack(a)[1].p_lo)
                                   for a in analyses])
    records = [r for d in defenses for a in plain for r in h.run_cells(d, a)]
    runs = [run_tolerable(h, d, a) for a in analyses for d in defenses]
    profiled = [run_profiled_voltages(h, d, a, profile) for a in analyses for d in defenses] \
        if profile is not None and profile.kind == "error_maps" else []
    if not _is_main(args):
        return 0
    if not runs:
        _emit(tables(records), args.format, records, args)
        return 0
    if args.format == "json":
        from .tables import cells_json

        out = {"cells": cells_json(records), "tolerable": [r.analysis for r in runs]}
        if profile is not None:
            out["voltage_profile"] = profile.to_json()
            from bitbench.configs.energy import precision_tradeoff, voltage_energy

            out["voltage"] = [{"defense": r.defense, "bits": r.bits, "spec": r.analysis["spec"],
                               **voltage_energy(profile, r.result).to_json()} for r in runs]
            out["precision"] = precision_tradeoff([{"name": r.defense, "bits": r.bits, "tolerable": r.result,
                                                    "clean_err": r.clean_err, "spec": r.analysis["spec"]}
                                                   for r in runs], profile)
            out["profiled"] = [{k: (v.to_json() if hasattr(v, "to_json") else [b.to_json() for b in v]
                                    if k == "ci95" else v) for k, v in d.items() if k != "records"}
                               for d in profiled]
        print(json.dumps(out, indent=2, default=str))
        return 0
    parts = tables(records) if records else []
    parts = [parts] if not isinstance(parts, list) else parts
    parts.append(tolerable_table(runs))
    text = [render(parts, args.format)]
    line = orderings_line(runs)
    if line:
        text.append(line)
    if profile is not None:
        text.append(render(voltage_table(runs, profile), args.format))
        if profiled:
            text.append(render(profiled_table(profiled, profile), args.format))
        text.append(render(precision_table(runs, profile), args.format))
        text.append(energy_note(profile))
    print("\n\n".join(text))
    return 0


def _check_pinned(path: str | None, want: str) -> None:
    """``--checkpoint-sha256``: the checkpoint file must have exactly this SHA-256."""
    from bitbench.configs.fileio import sha256_file

    if not path:
        raise UsageError("--checkpoint-sha256 pins the file given with --checkpoint; give --checkpoint FILE too")
    want = want.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", want):
        raise UsageError(f"--checkpoint-sha256: expected 64 hex digits (a SHA-256), got {want!r}")
    try:
        got = sha256_file(path)
    except OSError as e:
        raise UsageError(f"--checkpoint {path}: cannot read it ({e.strerror or e})") from None
    if got != want:
        raise UsageError(f"--checkpoint {path}: its SHA-256 is {got}, not the {want} given with --checkpoint-sha256 "
                         "(another or a damaged file)")


def _run_entry(args) -> int:
    """``run --entry FILE``: the entry's attacks on each checkpoint it names, every number compared with the
    entry's; the verdict goes to stdout, and the exit code is :data:`REPRODUCTION_FAILED` when one differs."""
    from bitbench.configs.fileio import sha256_file
    from bitbench.configs.suite import load_suite
    from bitbench.leaderboard.entries import load_entry

    from .tables import run_tables

    clash = [f for f, v in (("--model", args.model), ("--dataset", args.dataset), ("--defense", args.defense),
                            ("--rates", args.rates), ("--seeds", args.seeds), ("--train-seeds", args.train_seeds),
                            ("--metric", args.metric)) if v]
    if clash:
        raise UsageError(f"--entry names the model, dataset, defense, models and metrics; it cannot be combined "
                         f"with {', '.join(clash)} (only --attack, --checkpoint, --suite (the entry's suite file), "
                         "--data-dir and the run options)")
    entry = load_entry(args.entry, load_suite(args.suite) if args.suite != "default" else None)
    cks = entry.get("checkpoints") or []
    if not cks:
        raise UsageError(f"{args.entry}: the entry names no checkpoint, so its models cannot be re-evaluated "
                         f"without training (train them: python -m benchmark run --suite {entry['suite']} --defense "
                         f"{entry['defense']} --train-seeds {','.join(str(s) for s in entry['train_seeds'])})")
    if args.checkpoint and len(cks) != 1:
        raise UsageError(f"--checkpoint gives one file, the entry names {len(cks)} (one per model)")
    suite = load_suite(entry["suite"] if args.suite == "default" else args.suite)
    suite = suite.replace(model=entry["model"], model_options=dict(entry["model_options"]),
                          metrics=list(entry.get("metrics") or {}))
    attacks = list(args.attack or [r["attack"] for r in entry["results"]])
    _validate_specs([entry["defense"]], attacks)
    records, verdicts = [], []
    for ck in cks:
        path = args.checkpoint or os.path.join(os.path.dirname(os.path.abspath(args.entry)), ck["path"])
        if not os.path.isfile(path):
            raise UsageError(f"{path}: the checkpoint of entry {args.entry} (model {ck['train_seed']}) is not there "
                             "(give its location with --checkpoint)")
        digest = sha256_file(path)
        if digest != ck["sha256"]:
            raise UsageError(f"{path}: SHA-256 {digest} differs from the entry's {ck['sha256']}: not the checkpoint "
                             f"model {ck['train_seed']} of entry {entry['name']} was measured on")
        h = _harness(args, suite)
        h.supply_checkpoint(path, source=entry.get("model_source", "trained"))
        recs = [h.run_cell(entry["defense"], a) for a in attacks]
        verdicts += _compare_with_entry(entry, entry["train_seeds"].index(ck["train_seed"]), recs)
        # the table shows the entry's models side by side: each record stands for the entry's model of that seed
        records += [dataclasses.replace(r, train_seed=ck["train_seed"]) for r in recs]
    same = sum(1 for ok, _ in verdicts if ok)
    differ = [what for ok, what in verdicts if not ok]
    line = f"entry {entry['name']}: {same}/{len(verdicts)} results reproduced exactly"
    if differ:
        line += f"; differ: {'; '.join(differ)}; NOT REPRODUCED"
    elif not verdicts:
        line += " (none of the attacks run is one of the entry's results); NOT REPRODUCED"
    _emit(run_tables(records), args.format, records, args)
    if _is_main(args):
        # the verdict on stdout after the table (stdout stays one JSON document with --format json) and on stderr
        if args.format != "json":
            print(line)
        print(line, file=sys.stderr)
    return EXIT_NOT_REPRODUCED if differ or not verdicts else 0


def _compare_with_entry(entry: dict, m: int, records) -> list[tuple[bool, str]]:
    """Per record of model ``m`` of the entry: whether its clean error and every per-pattern value of the entry's
    quantities equal the entry's, and what differs."""
    by_attack = {r["attack"]: r for r in entry["results"]}
    out = []
    for rec in records:
        want = by_attack.get(rec.attack)
        if want is None:
            continue
        bad = []
        if abs(rec.clean_err - entry["per_model_clean_err"][m]) > 1e-9:
            bad.append(f"clean error {100 * rec.clean_err:.2f}% vs {100 * entry['per_model_clean_err'][m]:.2f}%")
        for name, mat in want["per_model"].items():
            mine = rec.per_pattern(name)
            theirs = mat[m]
            if len(mine) != len(theirs) or any(
                    (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-9) for a, b in zip(mine, theirs)):
                bad.append(name)
        out.append((not bad, f"{rec.attack} model {entry['train_seeds'][m]} ({', '.join(bad)})"))
    return out


def cmd_suite(args) -> int:
    from bitbench.configs.suite import load_suite
    from .tables import suite_tables

    suite = load_suite(args.suite)
    attacks = suite.rate_attacks() + list(suite.attacks)
    if not suite.defenses or not attacks:
        raise UsageError(f"suite {suite.name!r} needs defenses and rates or attacks")
    _validate_specs(suite.defenses, attacks)
    h = _harness(args, suite)
    return _run_grid(args, h, suite.defenses, attacks, lambda recs: suite_tables(recs, "sd" if args.std else "ci"))


def cmd_train(args) -> int:
    import pandas as pd

    from bitbench.configs.suite import load_suite

    suite = _override_model_dataset(args, load_suite(args.suite))
    defenses = args.defense or list(suite.defenses)
    _validate_specs(defenses, [])
    h = _harness(args, suite)
    if args.save_quantized and _is_main(args):
        check_writable(args.save_quantized, "folder for quantized models", option="--save-quantized")
    if args.save_weights and _is_main(args):
        check_writable(args.save_weights, "folder for weights", option="--save-weights")
    h.preflight(defenses, [], results=False)
    rows = []
    seeds = [args.seed] if args.seed is not None else h.seeds()
    for d in defenses:
        if args.seed is None:
            h.prepare(d)   # the missing models of the seeds side by side where there are cores
        for seed in seeds:
            dep = h.deploy(d, seed)
            err = h.clean_error(d, seed)
            row = {"defense": dep.defense.spec, "seed": seed, "scheme": dep.qm.scheme.name, "words": dep.qm.n_words,
                   "Clean Err %": f"{100 * err:.2f}", "train s": f"{dep.train_seconds:.1f}",
                   "checkpoint": h.checkpoint_path(dep.defense, dep.key)}
            tag = safe_name(f"{suite.name}-{suite.model}-{dep.defense.spec}-seed{seed}", 120)  # one file per model
            if args.save_quantized and _is_main(args):
                path = os.path.join(args.save_quantized, tag + ".pt")
                _write_after_work(lambda: dep.qm.save(path), path, "--save-quantized")
                row["quantized"] = path
            if args.save_weights and _is_main(args):
                from bitbench.defenses.io import atomic_torch_save

                path = os.path.join(args.save_weights, tag + ".pt")
                _write_after_work(lambda: atomic_torch_save(dep.weights, path), path, "--save-weights")
                row["weights"] = path
            rows.append(row)
    from .tables import render

    if _is_main(args):
        print(render(pd.DataFrame(rows), args.format, rows))
    return 0


def cmd_profile(args) -> int:
    """``profile``: the vulnerability profile of one defense under one random-error attack (:mod:`.profile`); by
    default the suite's first model and its first :data:`~.profile.PROFILE_PATTERNS` chips."""
    from bitbench.configs.fileio import atomic_write_json, atomic_write_text
    from bitbench.configs.suite import load_suite

    from . import profile as pf

    suite = _override_model_dataset(args, load_suite(args.suite))
    attack = args.attack
    if attack is None:
        if suite.headline_rate is None:
            raise UsageError(f"suite {suite.name!r} has no headline rate: pass --attack, e.g. random_p0.1")
        attack = f"random_p{suite.headline_rate!r}"
    _validate_specs([args.defense], [attack])
    if args.patterns is None:
        suite = suite.replace(patterns=min(pf.PROFILE_PATTERNS, suite.patterns))
    if args.seeds is None and args.train_seeds is None:
        suite = suite.replace(train_seeds=suite.train_seeds[:1])
    h = _harness(args, suite)
    aspec, a = h.canonical_attack(attack)
    pf.check_profile_attack(a)   # before any training
    h.preflight([args.defense], [attack])
    out = args.out or os.path.join(args.results_dir, "profiles", safe_name(suite.name), safe_name(h.model_name),
                                   safe_name(h.canonical_defense(args.defense)), safe_name(aspec))
    check_writable(out, "profile folder", option="--out")   # profile.json goes there whatever --plot says
    prof = pf.run_profile(h, args.defense, attack)
    if not _is_main(args):
        return 0
    written = []
    path = os.path.join(out, "profile.json")
    _write_after_work(lambda: atomic_write_json(path, pf.profile_json(prof)), path, "--out")
    written.append(path)
    if args.plot in ("all", "svg"):
        path = os.path.join(out, "heatmap.svg")
        _write_after_work(lambda: atomic_write_text(path, pf.profile_svg(prof)), path, "--out")
        written.append(path)
    if args.plot in ("all", "png"):
        path = os.path.join(out, "heatmap.png")
        if pf.profile_png(prof, path):
            written.append(path)
        elif args.plot == "png":
            raise UsageError("--plot png needs matplotlib (pip install 'bitbench[test]' or matplotlib); --plot svg "
                             "writes the heatmap without it")
        else:
            print("note: no PNG heatmap (matplotlib is not installed); the SVG has the same picture",
                  file=sys.stderr)
    if args.format == "json":
        print(json.dumps(pf.profile_json(prof), indent=2))
    elif args.format == "csv":   # one table, a region column first
        import pandas as pd

        from .tables import render

        print(render(pd.concat([pf.profile_table(prof, r).assign(region=r) for r in prof.regions()])
                     .pipe(lambda df: df[["region"] + [c for c in df.columns if c != "region"]]), "csv"))
    else:
        from .tables import render

        cached = sum(1 for c in prof.cells if all(r.cached for r in c.records))
        print(f"vulnerability profile: {prof.defense} x {prof.attack} on {prof.suite}/{prof.model}, "
              f"{len(prof.train_seeds)} model(s) x {prof.patterns} patterns per cell, clean error "
              f"{100 * prof.clean_err:.1f}%; RErr % when only that layer and bit position take errors "
              f"({len(prof.cells)} cells, {cached} cached)")
        for region in prof.regions():
            print(f"\n{region}:")
            print(render(pf.profile_table(prof, region), args.format))
    print("wrote " + ", ".join(written), file=sys.stderr)
    return 0


def _write_after_work(write, path: str, option: str) -> None:
    """``write()`` a file the work produced (a folder checked before the work may have changed since): a failure is
    bad input naming the file and the option (exit 2), not a traceback; the work itself is kept (cached)."""
    try:
        write()
    except DiskFullError:
        raise
    except UsageError as e:
        raise UsageError(f"{option}: {e}") from None
    except OSError as e:
        raise UsageError(f"{option}: cannot write {path} ({e.strerror or e}); the trained model is cached, so the "
                         "same command with a writable folder only writes the file") from None


def _list_rows(what: str, pattern: str) -> dict:
    import fnmatch

    from bitbench.configs.suite import list_suites, load_suite

    from .builtin_entries import ATTACKS, DATASETS, DEFENSES, METRICS, MODELS, PROTECTIONS
    from .models import DATA_ARGS

    out = {}
    for section, reg in (("defenses", DEFENSES), ("protections", PROTECTIONS), ("attacks", ATTACKS),
                         ("metrics", METRICS), ("datasets", DATASETS), ("models", MODELS)):
        if what not in ("all", section):
            continue
        rows = [e for e in reg.describe() if fnmatch.fnmatchcase(e["name"], pattern)]
        for e in rows:
            if section == "models":  # the dataset supplies these
                e["params"] = {k: v for k, v in e["params"].items() if k not in DATA_ARGS}
            if section == "datasets":
                e["params"] = {k: v for k, v in e["params"].items() if k != "data_dir"}
        out[section] = rows + [{"name": n, "summary": f"(broken plug-in: {err})", "broken": True}
                               for n, err in sorted(reg.entry_point_errors.items())
                               if fnmatch.fnmatchcase(n, pattern)]
    if what in ("all", "suites"):
        rows = []
        for n in list_suites():
            if fnmatch.fnmatchcase(n, pattern):
                s = load_suite(n)
                rows.append({"name": n, "summary": s.description, "dataset": s.dataset, "model": s.model,
                             "defenses": s.defenses, "rates": s.rates, "patterns": s.patterns,
                             "train_seeds": s.train_seeds})
        out["suites"] = rows
    return out


def cmd_list(args) -> int:
    data = _list_rows(args.what, args.pattern)
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    for section, rows in data.items():
        print(f"{section}:")
        if not rows:
            print("  (none)")
        for r in rows:
            print(f"  {r['name']:<16} {r.get('summary', '')}")
            if r.get("aliases"):
                print(f"  {'':<16} also: {', '.join(r['aliases'])}")
            if r.get("form"):
                print(f"  {'':<16} form: {r['form']}")
            for k, v in (r.get("params") or {}).items():
                doc = (r.get("param_docs") or {}).get(k, "")
                print(f"  {'':<16}   {k}={v!r}{'  ' + doc if doc else ''}")
            if section == "suites":
                print(f"  {'':<16}   dataset={r['dataset']} model={r['model']} patterns={r['patterns']} "
                      f"train_seeds={r['train_seeds']}")
                print(f"  {'':<16}   defenses={r['defenses']}")
                print(f"  {'':<16}   rates={r['rates']}")
        print()
    return 0


def info_dict() -> dict:
    import platform

    import numpy
    import torch

    from bitbench import kernels

    from . import __version__
    from .harness import git_revision

    libs = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    for mod in ("cffi", "pandas", "tabulate", "h5py", "tqdm", "cupy", "matplotlib", "torchvision"):
        try:
            m = __import__(mod)
            libs[mod] = getattr(m, "__version__", "?")
        except Exception:
            libs[mod] = None
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return {"version": __version__, "git_rev": git_revision(), "kernels": kernels.backends(),
            "devices": devices, "torch_threads": torch.get_num_threads(), "libraries": libs}


def cmd_info(args) -> int:
    d = info_dict()
    if args.json:
        print(json.dumps(d, indent=2, default=str))
        return 0
    print(f"bitbench {d['version']} (git {d['git_rev'] or 'unknown'})")
    print("kernel backends: " + json.dumps(d["kernels"], default=str))
    print("devices: " + ", ".join(d["devices"]) + f"; torch threads: {d['torch_threads']}")
    print("libraries: " + ", ".join(f"{k} {v or '-'}" for k, v in d["libraries"].items()))
    return 0


def cmd_perf(args) -> int:
    from . import perf

    return perf.main(args)


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 2
    handlers = {"run": cmd_run, "suite": cmd_suite, "train": cmd_train, "list": cmd_list, "info": cmd_info,
                "perf": cmd_perf, "profile": cmd_profile}
    try:
        if args.command in handlers:
            try:
                return handlers[args.command](args)
            finally:
                d = getattr(args, "_dist", None)
                if d is not None and d.enabled:
                    d.close()
        from bitbench.leaderboard import cli as lcli

        if args.command == "submit":
            from .user_model import checkpoint_weights_digest

            return lcli.run_submit(args, checkpoint_weights_digest)
        return lcli.run_leaderboard(args)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: finished results and checkpoints are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as e:  # map the project's 'bad input' errors to exit code 2
        d = getattr(args, "_dist", None)
        where = f"rank {d.rank}/{d.world}: " if d is not None and d.enabled else ""
        if _is_usage_error(e):
            print(f"{where}error: {e}", file=sys.stderr)
            return 2
        if where:
            print(f"{where}failed: {type(e).__name__}: {e}; no partial result files are written (rank 0 writes "
                  "each finished record atomically); rerun the same command to resume", file=sys.stderr)
        raise


def _is_usage_error(e: Exception) -> bool:
    """A mistake of the user's (exit 2 with the message); everything else is a bug (traceback, exit 1)."""
    return isinstance(e, UsageError)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
