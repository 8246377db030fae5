"""Performance measurements: ``python -m benchmark perf {kernels,harness,train,attacks,all} [--device] [--json]``.

* ``kernels``: ``random_flip`` per backend against the original approach (one float uniform per bit).
* ``harness``: seconds per bit-error pattern of our evaluation loop for each memory format (8-bit RQuant per tensor,
  per channel, group-wise 4-bit; float32, float16, bfloat16, fp8), against the original code's loop (deep copy
  of the model, re-quantization, one float uniform per bit, a DataLoader) and against the floor (pure inference of
  the clean model on the same split); and the loop on protected memories (SEC-DED (72, 64), RADAR checksums:
  patterns over data and check bits, then decoded) against the unprotected loop, measured interleaved.
* ``train``: one plain forward+backward step, one quantization-aware step, one RandBET step, and their ratios.
* ``attacks``: milliseconds per flip of BFA (every weight a candidate, predicted labels) against a straightforward
  per-layer implementation of the same search in the same run (the reference's structure: a top-k sort of every
  layer's gradients, the whole layer rewritten and the whole model re-run for each trial), wall-clock and CPU time
  (robust to other processes on a shared machine), and whether both chose the same flips.

These are benchmarks, not tests: numbers vary with the machine; the targets are stated next to them.
"""

from __future__ import annotations

import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

__all__ = ["perf_harness", "perf_train", "perf_attacks", "main"]


def _timeit(fn, repeats: int, warmup: int = 1, sync=None) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _timeit_interleaved(fns: dict, repeats: int, warmup: int = 2, sync=None) -> dict:
    """Median seconds of each function, measured in interleaved rounds (fair under a varying machine load)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            if sync:
                sync()
            t = time.perf_counter()
            f()
            if sync:
                sync()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _sync(device):
    return (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else None


def _lenet_setup(device, train_epochs: int = 0):
    from bitbench.defenses import rquant

    from .data import load_dataset
    from .models import build_model

    ds = load_dataset("mnist5k")
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28, mean=ds.mean, std=ds.std,
                        seed=0).to(device)
    return ds, model, rquant(8)


def _original_pattern_loop(model, scheme, x, y, p: float, seed: int, batch_size: int) -> float:
    """The original code's per-pattern loop: deep copy, re-quantize every tensor, one float uniform per bit,
    evaluate through a DataLoader. Returns the error (used only for timing)."""
    from bitbench.defenses.quantization import dequantize_tensor, quantize_tensor

    m = copy.deepcopy(model)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad():
        for prm in m.parameters():
            codes, ctx = quantize_tensor(prm.data, scheme)
            bits = torch.rand(codes.numel(), scheme.bits, generator=gen, device=codes.device) < p
            weights = (1 << torch.arange(scheme.bits, device=codes.device)).to(torch.int64)
            mask = (bits.to(torch.int64) * weights).sum(1).to(codes.dtype).view_as(codes)
            prm.data.copy_(dequantize_tensor(codes ^ mask, ctx, scheme).view_as(prm))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
    wrong = 0
    m.eval()
    with torch.no_grad():
        for xb, yb in loader:
            wrong += (m(xb).argmax(1) != yb).sum().item()
    return wrong / len(y)


# The formats whose per-pattern time perf harness reports (each against the same floor, in interleaved rounds).
HARNESS_FORMATS = ("rquant", "rquant:granularity=channel", "rquant:bits=4,granularity=group:32", "float32",
                   "float16", "bfloat16", "fp8e4m3", "fp8e5m2")


def perf_harness(device="cpu", patterns: int = 20, p: float = 0.01, quick: bool = False,
                 formats=HARNESS_FORMATS) -> list[dict]:
    """Per-pattern seconds: floor (clean inference), our loop for each memory format, the original loop; LeNet on
    the embedded data. The first format (8-bit RQuant) is the one the original loop is compared with."""
    from bitbench.attacks import create_attack
    from bitbench.configs.registries import create_defense
    from bitbench.defenses.quantized_model import flatten_parameters

    from .evaluate import evaluate_attack, measure_memory, predict
    from .metrics import BUILTIN_METRICS

    device = torch.device(device)
    ds, model, scheme = _lenet_setup(device)
    if quick:
        patterns = min(patterns, 5)
    x, y = ds.test_x.to(device), ds.test_y.to(device)
    orig_model = copy.deepcopy(model)
    sync = _sync(device)
    attack = create_attack(f"random_p{p!r}", patterns=patterns)
    loops, words = {}, {}
    for spec in formats:
        m = copy.deepcopy(orig_model)
        qm = create_defense(spec).quantize(m).to(device)
        flatten_parameters(qm.parameters_of(m))  # as the harness does
        qm.load_into(m)
        clean = measure_memory(m, x, y, BUILTIN_METRICS)

        def ours(m=m, qm=qm, clean=clean):
            evaluate_attack(m, qm, attack, x, y, clean=clean)
        loops[spec], words[spec] = ours, qm.n_words
    qm0 = create_defense(formats[0]).quantize(model)
    flatten_parameters(qm0.parameters_of(model))
    qm0.load_into(model)

    def floor():
        for _ in range(patterns):
            predict(model, x)
    t = _timeit_interleaved({"floor": floor, **loops}, 5, warmup=1, sync=sync)  # 5 rounds: 10 loops on a shared machine
    t_floor = t["floor"] / patterns
    n_orig = max(2, patterns // 4)

    def orig():
        for k in range(n_orig):
            _original_pattern_loop(orig_model, scheme, x, y, p, 100 + k, batch_size=100)

    t_orig = _timeit(orig, 2, warmup=1, sync=sync) / n_orig
    base = {"device": str(device), "model": "lenet", "dataset": "mnist5k", "n_eval": int(y.shape[0]), "p": p}
    rows = [dict(base, loop="floor (clean inference)", words=words[formats[0]], ms_per_pattern=1e3 * t_floor,
                 ratio_to_floor=1.0)]
    for spec in formats:
        t_ours = t[spec] / patterns
        row = dict(base, loop=f"bitbench {spec}", words=words[spec], ms_per_pattern=1e3 * t_ours,
                   ratio_to_floor=t_ours / t_floor, target="<= 1.15x floor")
        if spec == formats[0]:
            row["speedup_vs_original"] = t_orig / t_ours
        rows.append(row)
    rows.append(dict(base, loop="original (deepcopy+requant+uniform/bit+DataLoader)", words=words[formats[0]],
                     ms_per_pattern=1e3 * t_orig, ratio_to_floor=t_orig / t_floor))
    qm0.load_into(model)
    rows += _perf_protected(model, qm0, attack, x, y, measure_memory(model, x, y, BUILTIN_METRICS), patterns, sync,
                            dict(base, words=qm0.n_words), t_floor)
    return rows


def _perf_protected(model, qm, attack, x, y, clean, patterns, sync, base, floor) -> list[dict]:
    """The evaluation loop on protected memories against the unprotected one (interleaved rounds, same patterns)."""
    from bitbench.configs.registries import create_protection
    from bitbench.defenses.protection import ProtectedModel

    from .evaluate import evaluate_attack

    loops = {"unprotected": qm}  # the same patterns: data bits flip as in the unprotected memory
    for spec in ("secded", "radar"):
        loops[spec] = ProtectedModel(qm, [create_protection(spec)])
    decode = {}

    def run(m, name):
        def f():
            ev = evaluate_attack(model, m, attack, x, y, clean=clean)
            decode[name] = ev.decode_ms
        return f

    t = _timeit_interleaved({k: run(m, k) for k, m in loops.items()}, 3, warmup=1, sync=sync)
    t0 = t["unprotected"] / patterns
    rows = []
    labels = {"secded": "bitbench + secded (72, 64) ECC", "radar": "bitbench + radar (group 16 checksums)"}
    for k, label in labels.items():
        pm = loops[k]
        tk = t[k] / patterns
        rows.append(dict(base, loop=label, ms_per_pattern=1e3 * tk, ratio_to_floor=tk / floor,
                         ratio_to_unprotected=tk / t0, decode_ms=decode.get(k), memory_overhead=pm.memory_overhead,
                         target="<= 1.3x unprotected" if k == "secded" else ""))
    return rows


def _train_models(device, quick: bool):
    """(name, model, x, y) for the train benchmark: LeNet and the ViT on CPU; SimpleNet width 64 + group norm on a
    GPU."""
    from .data import load_dataset
    from .models import build_model

    out = []
    dev = torch.device(device)
    if dev.type == "cpu" or quick:
        ds = load_dataset("mnist5k")
        m = build_model("lenet", num_classes=10, in_channels=1, image_size=28, mean=ds.mean, std=ds.std, seed=0)
        out.append(("lenet", m.to(dev), ds.train_x[:128].to(dev), ds.train_y[:128].to(dev)))
        if not quick:  # the vit suite's transformer: attention, layer norms, embeddings in the memory
            m = build_model("vit", num_classes=10, in_channels=1, image_size=28, mean=ds.mean, std=ds.std, seed=0)
            out.append(("vit", m.to(dev), ds.train_x[:128].to(dev), ds.train_y[:128].to(dev)))
    if dev.type == "cuda":
        g = torch.Generator().manual_seed(0)
        m = build_model("simplenet", num_classes=10, in_channels=3, image_size=32, norm="rgn", width=64, seed=0)
        x = torch.rand(128, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (128,), generator=g)
        out.append(("simplenet-w64-rgn", m.to(dev), x.to(dev), y.to(dev)))
    return out


def perf_train(device="cpu", quick: bool = False, repeats: int | None = None) -> list[dict]:
    """One training step, three ways: plain forward+backward (+SGD), QAT, RandBET (p = 1%)."""
    from bitbench.defenses import RandBETStep, TrainConfig, Trainer, rquant

    rows = []
    sync = _sync(device)
    if torch.device(device).type == "cuda":  # as the reference figures (TF32 matmuls and convolutions)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    for name, model, x, y in _train_models(device, quick):
        reps = repeats or (5 if quick else 30)
        cfg = TrainConfig(epochs=1, device=str(device), progress=False)
        plain = Trainer(model, cfg)
        qat = Trainer(model, cfg, scheme=rquant(8, 0.1), w_max=0.1)
        rb_step = RandBETStep(0.01, threshold=None, seed=0)
        rb = Trainer(model, cfg, scheme=rquant(8, 0.1), step=rb_step, w_max=0.1)

        def one(tr):
            def f():
                tr.optimizer.zero_grad(set_to_none=True)
                tr.step(tr, x, y)
                tr.optimizer.step()
            return f

        t = _timeit_interleaved({"plain": one(plain), "qat": one(qat), "rb": one(rb)}, reps, warmup=3, sync=sync)
        t_plain, t_qat, t_rb = t["plain"], t["qat"], t["rb"]
        base = {"device": str(device), "model": name, "batch": int(x.shape[0]),
                "params": sum(p.numel() for p in model.parameters())}
        rows += [dict(base, step="plain fwd+bwd", ms=1e3 * t_plain, ratio=1.0),
                 dict(base, step="QAT", ms=1e3 * t_qat, ratio=t_qat / t_plain,
                      target="<= 1.10x (CPU) / 1.3x (GPU)"),
                 dict(base, step="RandBET p=1%", ms=1e3 * t_rb, ratio=t_rb / t_plain,
                      target="<= 2.2x (CPU) / 2.6x (GPU)")]
    return rows


def _bfa_per_layer(qm, model, x, y, tensors: list[int], flips: int) -> list[tuple[int, int, int]]:
    """The straightforward per-layer BFA step loop (timing baseline): returns the (tensor, index, bit) flipped."""
    from bitbench import kernels

    codes = qm.codes.clone()
    params = qm.parameters_of(model)
    out = []
    for _ in range(flips):
        loss0 = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss0, [params[t] for t in tensors])
        best = None
        for t, g in zip(tensors, grads):
            o, n = qm.offsets[t], qm.lengths[t]
            view = codes[o:o + n]
            g = g.reshape(-1)
            idx = g.abs().topk(n).indices                       # every weight a candidate, sorted
            gain = g[idx].double().unsqueeze(1) * qm.flip_deltas(t, idx, view[idx])
            v, i = gain.reshape(-1).max(0)
            if not float(v) > 0:
                continue
            w, b = int(idx[i // qm.bits]), int(i % qm.bits)
            new = view.clone()
            new[w] = kernels.flip_one_bit(view[w:w + 1], torch.tensor([b]))[0]
            saved = params[t].detach().clone()
            with torch.no_grad():
                params[t].copy_(qm.decode_words(t, torch.arange(n), new).view_as(params[t]))
                loss = F.cross_entropy(model(x), y).item()
                params[t].copy_(saved)
            if best is None or loss > best[0]:
                best = (loss, t, w, b, new)
        if best is None:
            break
        _, t, w, b, new = best
        o, n = qm.offsets[t], qm.lengths[t]
        codes[o:o + n] = new
        with torch.no_grad():
            params[t].copy_(qm.decode_words(t, torch.arange(n), new).view_as(params[t]))
        out.append((t, w, b))
    qm.load_into(model)
    return out


def perf_attacks(device="cpu", quick: bool = False, flips: int | None = None) -> list[dict]:
    """ms per flip: BFA against the straightforward per-layer search (LeNet, embedded data, batch 128)."""
    from bitbench.attacks import create_attack
    from bitbench.attacks.base import attack_batch
    from bitbench.attacks.bfa import attacked_tensors
    from bitbench.defenses import QuantizedModel, TrainConfig, create_defense
    from bitbench.defenses.quantized_model import flatten_parameters

    device = torch.device(device)
    ds, model, _ = _lenet_setup(device)
    d = create_defense("rquant")
    d.train(model, ds.train_x[:2000].to(device), ds.train_y[:2000].to(device),
            TrainConfig(epochs=1, device=str(device), progress=False))
    model.eval()
    qm = QuantizedModel.from_module(model, d.scheme()).to(device)
    qm.load_into(model)
    flatten_parameters(qm.parameters_of(model))
    flips = flips or (5 if quick else 20)
    attack = create_attack(f"bfa_n{flips}:trials=1,stop=budget")
    data = (ds.attack_x.to(device), ds.attack_y.to(device))
    x, _ = attack_batch(data, attack.batch, attack.seed)
    with torch.no_grad():
        y = model(x).argmax(1)
    tensors = attacked_tensors(qm, model)
    for p in qm.parameters_of(model):
        p.requires_grad_(True)
    got = {}

    def ours():
        got["ours"] = next(attack.perturbations(qm, model=model, data=data)).trace

    def base():
        got["base"] = _bfa_per_layer(qm, model, x, y, tensors, flips)

    wall, cpu = _timeit_wall_cpu({"ours": ours, "base": base}, 2 if quick else 5, sync=_sync(device))
    same = [(e["tensor"], e["index"], e["bit"]) for e in got["ours"]] == got["base"]
    n = {"ours": max(1, len(got["ours"])), "base": max(1, len(got["base"]))}
    row = {"device": str(device), "model": "lenet", "threads": torch.get_num_threads(), "batch": int(x.shape[0]),
           "flips": flips, "words": qm.n_words}

    def ms(d, k):
        return 1e3 * d[k] / n[k]

    return [dict(row, search="bitbench BFA (partial forward, cached ranking)", ms_per_flip=ms(wall, "ours"),
                 cpu_ms_per_flip=ms(cpu, "ours"), ratio=ms(wall, "ours") / ms(wall, "base"),
                 cpu_ratio=ms(cpu, "ours") / ms(cpu, "base"), same_flips=same, target="<= 1.0x the per-layer search"),
            dict(row, search="straightforward per-layer search", ms_per_flip=ms(wall, "base"),
                 cpu_ms_per_flip=ms(cpu, "base"), ratio=1.0, cpu_ratio=1.0, same_flips=same)]


def _timeit_wall_cpu(fns: dict, repeats: int, sync=None) -> tuple[dict, dict]:
    """Median wall-clock and CPU (process) seconds of each function, in interleaved rounds after one warm-up
    round; CPU time does not count other processes' load (with several threads it adds up the threads' time)."""
    for f in fns.values():
        f()
    wall, cpu = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            if sync:
                sync()
            t, c = time.perf_counter(), time.process_time()
            f()
            if sync:
                sync()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def _print(rows: list[dict], as_json: bool, title: str) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    import pandas as pd

    df = pd.DataFrame(rows).astype(object).where(lambda d: d.notna(), "")
    for c in df.columns:
        df[c] = df[c].map(lambda v: f"{v:.3f}" if isinstance(v, float) else v)
    print(f"# {title}")
    print(df.to_markdown(index=False, tablefmt="simple"))
    print()


def main(args) -> int:
    from .context import resolve_device

    what = args.what
    dev = str(resolve_device(args.device))  # cpu, cuda, cuda:N (anything else: a usage error, exit 2)
    if what in ("kernels", "all"):
        from . import perf_kernels

        sizes = (60_000, 1_000_000) if args.quick else (60_000, 5_500_000, 25_000_000)
        rows = perf_kernels.run(sizes=sizes, p=0.01, device=dev)
        if args.json:
            _print(rows, True, "")
        else:
            print("# kernels: random_flip vs one float uniform per bit (p = 1%, uint8 words)")
            print(perf_kernels.format_table(rows))
            print()
    if what in ("harness", "all"):
        _print(perf_harness(dev, quick=args.quick), args.json,
               "harness: ms per bit-error pattern (LeNet, embedded MNIST test split)")
    if what in ("train", "all"):
        _print(perf_train(dev, quick=args.quick), args.json, "train: one step at batch 128")
    if what in ("attacks", "all"):
        _print(perf_attacks(dev, quick=args.quick), args.json,
               "attacks: BFA ms per flip (LeNet, batch 128, every weight a candidate) vs a per-layer search")
    return 0
