"""Speed of ``kernels.random_flip`` per backend against the original approach (one float32 uniform per bit).

    python -m benchmark.perf_kernels [--device cuda] [--json] [--json-out FILE] [--sizes 60000 5500000]
                                     [--repeats 5] [--backends c,torch] [--threads N]

The baseline is what the original code did for one random bit-error pattern: ``torch.rand(N, m) < p`` (one
float32 uniform per bit), pack the m flip bits of each word into a mask, xor. Both are measured in the same run on
the same N uint8 words (m = 8). Each record: device, backend ('baseline' for the original approach), n, p, ms
(median), ms_min, ratio_to_baseline (ms / baseline ms: below 1 is faster), speedup (baseline ms / ms), on CUDA
also ms_pipelined / speedup_pipelined (per call within 20 back-to-back calls: a sweep's throughput) and gbps
(bytes read + written by one pattern, n + n for uint8, per second: compare with the device's copy bandwidth).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from bitbench import kernels
from bitbench.configs.errors import UsageError

__all__ = ["run", "format_table", "baseline_flip", "main"]

BITS = 8


def baseline_flip(x: torch.Tensor, p: float, m: int = BITS) -> torch.Tensor:
    """The original approach: one float32 uniform per bit, compare, pack to a mask, xor (uint8 words)."""
    flips = torch.rand(x.numel(), m, device=x.device) < p
    shifts = torch.arange(m, dtype=torch.uint8, device=x.device)
    mask = (flips.to(torch.uint8) << shifts).sum(-1, dtype=torch.uint8)
    return x ^ mask.view_as(x)


def _time(fn, device: torch.device, repeats: int) -> list[float]:
    """Wall-clock ms of fn() per call (after one warm-up call); CUDA work is synchronized."""
    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return times


def _time_pipelined(fn, device: torch.device, calls: int = 20, rounds: int = 3) -> float:
    """CUDA only: ms per call of ``calls`` back-to-back calls between two events (median of ``rounds``), i.e.
    the throughput of a sweep that launches one pattern after another: the host's per-call work overlaps the
    GPU's, unlike the single-call latency of :func:`_time`."""
    fn()
    torch.cuda.synchronize(device)
    res = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        res.append(start.elapsed_time(end) / calls)
    return statistics.median(res)


def _backends_for(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["cupy", "torch"] if "cupy" in kernels.backends()["available"] else ["torch"]
    return ["c", "torch"] if "c" in kernels.backends()["available"] else ["torch"]


def run(sizes=(60_000, 5_500_000, 25_000_000), p: float = 0.01, device="cpu", repeats: int | None = None,
        backends=None) -> list[dict]:
    """Measure random_flip (each available backend, or those named in ``backends``) and the baseline at each size.

    repeats: timed calls per measurement after a warm-up (default 5 on CPU, 20 on CUDA). The torch reference on
    the CPU is slow: above 1M words it is timed at most twice, and above 10M words only when ``backends`` names it.
    Returns a list of records (see the module doc)."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda' was asked for but CUDA is not available")
    names = list(backends) if backends is not None else _backends_for(device)
    for name in names:
        if name not in kernels.BACKENDS:
            raise UsageError(f"backends: unknown backend {name!r}; known: {', '.join(kernels.BACKENDS)}")
    default_repeats = 20 if device.type == "cuda" else 5
    gen = torch.Generator(device="cpu").manual_seed(0)
    records = []
    for n in sizes:
        n = int(n)
        x = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).to(device)
        out = torch.empty_like(x)
        rows = []
        for name in ["baseline"] + names:
            reps = repeats or default_repeats
            if name == "baseline":
                fn = lambda: baseline_flip(x, p)  # noqa: E731
            else:
                if name == "torch" and device.type == "cpu" and n > 1_000_000:
                    if backends is None and n > 10_000_000:
                        continue  # the CPU reference takes seconds there; ask for it by name
                    reps = min(reps, 2)
                fn = lambda name=name: kernels.random_flip(x, p, seed=100, out=out, backend=name)  # noqa: E731
            times = _time(fn, device, reps)
            ms = statistics.median(times)
            row = {"device": str(device), "backend": name, "n": n, "p": p, "ms": round(ms, 4),
                   "ms_min": round(min(times), 4), "gbps": round(2 * n / (ms * 1e-3) / 1e9, 3)}
            if device.type == "cuda" and not (name == "torch" and n > 1_000_000):
                row["ms_pipelined"] = round(_time_pipelined(fn, device), 4)
            rows.append(row)
        base = rows[0]["ms"]
        base_p = rows[0].get("ms_pipelined")
        for r in rows:
            r["ratio_to_baseline"] = round(r["ms"] / base, 4)
            r["speedup"] = round(base / r["ms"], 2)
            if base_p and r.get("ms_pipelined"):
                r["speedup_pipelined"] = round(base_p / r["ms_pipelined"], 2)
        records.extend(rows)
    return records


def format_table(records: list[dict]) -> str:
    """A plain-text table of run()'s records."""
    cols = ["device", "backend", "n", "p", "ms", "ms_min", "speedup", "ratio_to_baseline", "gbps"]
    head = ["device", "backend", "n", "p", "ms", "ms (min)", "speedup", "ms/baseline", "GB/s"]
    if any("ms_pipelined" in r for r in records):  # CUDA: also the back-to-back throughput
        cols += ["ms_pipelined", "speedup_pipelined"]
        head += ["ms (pipelined)", "speedup (pipelined)"]
    cells = [[f"{r.get(c, ''):,}" if c == "n" else str(r.get(c, "")) for c in cols] for r in records]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmark.perf_kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    ap.add_argument("--sizes", type=int, nargs="+", default=[60_000, 5_500_000, 25_000_000])
    ap.add_argument("--p", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--backends", default=None, help="comma-separated subset of torch,c,cupy")
    ap.add_argument("--json-out", default=None, metavar="FILE", help="also write the records as JSON to FILE")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads(N) (also the C kernel's)")
    args = ap.parse_args(argv)
    names = args.backends.split(",") if args.backends else None
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        recs = run(sizes=args.sizes, p=args.p, device=args.device, repeats=args.repeats, backends=names)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(recs, f, indent=1)
    if args.json:
        print(json.dumps(recs, indent=1))
    else:
        info = kernels.backends()
        print(f"# kernels.random_flip vs one float32 uniform per bit (p = {args.p}, uint8 words, "
              f"{torch.get_num_threads()} torch threads)")
        print(f"# backends: cpu={info['cpu']} cuda={info['cuda']} c_build={info['c_build']!r}")
        print(format_table(recs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
