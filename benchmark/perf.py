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

``--model SPEC`` (harness, attacks): the same measurements on another architecture at random initialization
(e.g. ``gpt:width=768,depth=14,heads=12``, about 100M parameters, on the embedded text; a non-text model on
mnist5k), for the scale table of docs/performance.md: only 8-bit RQuant (and the protected memories), no original
loop (its one float per bit does not fit a large memory), with the parameter count, the float32 size and the peak
resident memory of the process (``peak_rss_mb``; ``act_mb``: what one clean forward of a batch added to it).
``--n-eval``/``--batch``/``--patterns``/``--p``/``--flips`` size the measurement.

These are benchmarks, not tests: numbers vary with the machine; the targets are stated next to them.
"""

from __future__ import annotations

import copy
import json
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

__all__ = ["perf_harness", "perf_train", "perf_attacks", "main", "add_arguments"]


def add_arguments(p) -> None:
    """The ``perf`` command's arguments (on the argparse parser ``p``)."""
    p.add_argument("what", choices=("kernels", "harness", "train", "attacks", "all"))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", action="store_true", help="one JSON record per row")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    p.add_argument("--model", default=None, metavar="SPEC",
                   help="harness/attacks on this architecture at random initialization instead of LeNet (e.g. "
                        "gpt:width=768,depth=14,heads=12: the scale table; the embedded text for gpt models)")
    p.add_argument("--dataset", default=None, metavar="SPEC",
                   help="the data of --model (default: text for a gpt model, else mnist5k)")
    p.add_argument("--n-eval", type=int, default=None, help="evaluation inputs of --model (default 64)")
    p.add_argument("--batch", type=int, default=None,
                   help="evaluation batch of --model (default: the harness's) and the attacker's batch of BFA")
    p.add_argument("--patterns", type=int, default=None, help="patterns per timed loop (default 20; --model: 5)")
    p.add_argument("--p", type=float, default=None, help="bit error rate of the harness (default 0.01; --model: "
                                                         "0.0001)")
    p.add_argument("--flips", type=int, default=None, help="BFA flips (default 20; --quick 5)")
    p.add_argument("--no-baseline", action="store_true",
                   help="attacks --model: skip the per-layer search (slow on a large model)")


def _rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1 << 20) if sys.platform == "darwin" else r / 1024


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


def _timeit_interleaved(fns: dict, repeats: int, warmup: int = 2, sync=None, cpu: dict | None = None) -> dict:
    """Median seconds of each function, measured in interleaved rounds (fair under a varying machine load).
    ``cpu``: a dict that receives the median CPU (process) seconds of each function too (with one thread: robust
    to other processes' load)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            if sync:
                sync()
            t, c = time.perf_counter(), time.process_time()
            f()
            if sync:
                sync()
            times[k].append(time.perf_counter() - t)
            cpus[k].append(time.process_time() - c)
    if cpu is not None:
        cpu.update({k: statistics.median(v) for k, v in cpus.items()})
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


def _model_setup(device, spec: str, dataset: str | None, n_eval: int | None):
    """``(ds, model, act_mb)`` for ``--model``: the architecture at random initialization (seed 0) on its data
    (``text`` for a gpt model: windows of its context; else mnist5k), the first ``n_eval`` evaluation inputs."""
    from .data import load_dataset
    from .models import build_model
    from .models.build import resolve_model

    name = resolve_model(spec).name
    if dataset is None:
        dataset = "text" if name == "gpt" or name.startswith("transformers:GPT") else "mnist5k"
    ds = load_dataset(dataset, n_eval=n_eval or 64)
    model = build_model(spec, **ds.model_args(), seed=0).to(device).eval()
    return ds, model


def _clean_forward_mb(model, x, batch_size) -> float:
    """MiB the peak resident memory rose by during one clean forward pass of one batch (activations)."""
    from .evaluate import predict

    before = _rss_mb()
    predict(model, x[:batch_size] if batch_size else x, batch_size)
    return max(0.0, _rss_mb() - before)


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
                 formats=HARNESS_FORMATS, model_spec: str | None = None, dataset: str | None = None,
                 n_eval: int | None = None, batch_size: int | None = None) -> list[dict]:
    """Per-pattern seconds: floor (clean inference), our loop for each memory format, the original loop; LeNet on
    the embedded data. The first format (8-bit RQuant) is the one the original loop is compared with.
    ``model_spec``: another architecture at random initialization, 8-bit RQuant and the protected memories only,
    no original loop; rows carry ``params``, ``fp32_mb`` and the process's ``peak_rss_mb`` (see the module doc)."""
    from bitbench.attacks import create_attack
    from bitbench.configs.registries import create_defense
    from bitbench.defenses.quantized_model import flatten_parameters

    from .evaluate import evaluate_attack, measure_memory, predict
    from .metrics import BUILTIN_METRICS

    device = torch.device(device)
    rss0 = _rss_mb()
    if model_spec is None:
        ds, model, scheme = _lenet_setup(device)
        name, dname = "lenet", "mnist5k"
    else:
        ds, model = _model_setup(device, model_spec, dataset, n_eval)
        name, dname, formats = model_spec, ds.name, formats[:1]
    if quick:
        patterns = min(patterns, 5)
    x, y = ds.test_x.to(device), ds.test_y.to(device).reshape(-1)   # labels flat: tokens of a language model
    n_params = sum(q.numel() for q in model.parameters())
    act_mb = _clean_forward_mb(model, x, batch_size) if model_spec is not None else None
    orig_model = copy.deepcopy(model) if model_spec is None else None
    sync = _sync(device)
    attack = create_attack(f"random_p{p!r}", patterns=patterns)
    loops, words = {}, {}
    for spec in formats:
        m = copy.deepcopy(orig_model) if model_spec is None else model
        qm = create_defense(spec).quantize(m).to(device)
        flatten_parameters(qm.parameters_of(m))  # as the harness does
        qm.load_into(m)
        clean = measure_memory(m, x, y, BUILTIN_METRICS, batch_size=batch_size)

        def ours(m=m, qm=qm, clean=clean):
            evaluate_attack(m, qm, attack, x, y, clean=clean, batch_size=batch_size)
        loops[spec], words[spec] = ours, qm.n_words
    qm0 = create_defense(formats[0]).quantize(model) if model_spec is None else qm
    if model_spec is None:
        flatten_parameters(qm0.parameters_of(model))
    qm0.load_into(model)

    def floor():
        for _ in range(patterns):
            predict(model, x, batch_size)
    rounds = 5 if model_spec is None else 3
    cpu = {}
    t = _timeit_interleaved({"floor": floor, **loops}, rounds, warmup=1, sync=sync, cpu=cpu)  # 5 rounds: 10 loops on a shared machine
    t_floor = t["floor"] / patterns
    base = {"device": str(device), "model": name, "dataset": dname, "n_eval": int(x.shape[0]), "p": p}
    if model_spec is not None:
        base.update(params=n_params, fp32_mb=4 * n_params / (1 << 20), act_mb=act_mb, threads=torch.get_num_threads())
    rows = [dict(base, loop="floor (clean inference)", words=words[formats[0]], ms_per_pattern=1e3 * t_floor,
                 ratio_to_floor=1.0, cpu_ms_per_pattern=1e3 * cpu["floor"] / patterns, cpu_ratio=1.0)]
    for spec in formats:
        t_ours = t[spec] / patterns
        row = dict(base, loop=f"bitbench {spec}", words=words[spec], ms_per_pattern=1e3 * t_ours,
                   ratio_to_floor=t_ours / t_floor, cpu_ms_per_pattern=1e3 * cpu[spec] / patterns,
                   cpu_ratio=cpu[spec] / cpu["floor"], target="<= 1.15x floor")
        rows.append(row)
    if model_spec is None:
        n_orig = max(2, patterns // 4)

        def orig():
            for k in range(n_orig):
                _original_pattern_loop(orig_model, scheme, x, y, p, 100 + k, batch_size=100)

        t_orig = _timeit(orig, 2, warmup=1, sync=sync) / n_orig
        rows[1]["speedup_vs_original"] = t_orig / (t[formats[0]] / patterns)
        rows.append(dict(base, loop="original (deepcopy+requant+uniform/bit+DataLoader)", words=words[formats[0]],
                         ms_per_pattern=1e3 * t_orig, ratio_to_floor=t_orig / t_floor))
    qm0.load_into(model)
    rows += _perf_protected(model, qm0, attack, x, y, measure_memory(model, x, y, BUILTIN_METRICS,
                                                                     batch_size=batch_size),
                            patterns, sync, dict(base, words=qm0.n_words), t_floor, batch_size, rounds)
    if model_spec is not None:
        peak = _rss_mb()
        for r in rows:
            r["peak_rss_mb"] = peak
        rows[0]["rss_at_start_mb"] = rss0
        # ru_maxrss is the process's lifetime peak: in a process that peaked higher before the measurement (a
        # test session, say) the ratio is not measurable here -- None, never a made-up 0
        rows[0]["memory_ratio"] = (peak - rss0) / (4 * n_params / (1 << 20) + act_mb) if peak > rss0 else None
        rows[0]["target"] = "memory_ratio <= 2 (peak above the start / (float32 model + one batch's activations))"
    return rows


def _perf_protected(model, qm, attack, x, y, clean, patterns, sync, base, floor, batch_size=None,
                    rounds: int = 3) -> list[dict]:
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
            ev = evaluate_attack(model, m, attack, x, y, clean=clean, batch_size=batch_size)
            decode[name] = ev.decode_ms
        return f

    cpu = {}
    t = _timeit_interleaved({k: run(m, k) for k, m in loops.items()}, rounds, warmup=1, sync=sync, cpu=cpu)
    t0 = t["unprotected"] / patterns
    rows = []
    labels = {"secded": "bitbench + secded (72, 64) ECC", "radar": "bitbench + radar (group 16 checksums)"}
    for k, label in labels.items():
        pm = loops[k]
        tk = t[k] / patterns
        rows.append(dict(base, loop=label, ms_per_pattern=1e3 * tk, ratio_to_floor=tk / floor,
                         ratio_to_unprotected=tk / t0, cpu_ms_per_pattern=1e3 * cpu[k] / patterns,
                         cpu_ratio_to_unprotected=cpu[k] / cpu["unprotected"], decode_ms=decode.get(k),
                         memory_overhead=pm.memory_overhead,
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
    """The straightforward per-layer BFA step loop (timing baseline): returns the (tensor, index, bit) flipped.
    ``y``: one label per example, or per token of a language model (the loss: the task's cross-entropy)."""
    from bitbench import kernels
    from bitbench.defenses.tasks import task_for

    task = task_for(y)
    codes = qm.codes.clone()
    params = qm.parameters_of(model)
    out = []
    for _ in range(flips):
        loss0 = task.loss(model(x), y)
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
                loss = task.loss(model(x), y).item()
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


def perf_attacks(device="cpu", quick: bool = False, flips: int | None = None, model_spec: str | None = None,
                 dataset: str | None = None, batch: int | None = None, baseline: bool = True) -> list[dict]:
    """ms per flip: BFA against the straightforward per-layer search (LeNet, embedded data, batch 128).
    ``model_spec``: another architecture at random initialization (not trained: the search's cost does not depend
    on it), batch ``batch`` (default 128; a language model's windows: 8); rows carry ``params``, ``cpu_ms_per_flip_per_mparam``
    (the per-flip time over the parameter count, for the scale table) and the peak resident memory.
    ``baseline=False``: no per-layer search (its whole-layer rewrites are slow on a large model)."""
    from bitbench.attacks import create_attack
    from bitbench.attacks.base import attack_batch
    from bitbench.attacks.bfa import attacked_tensors
    from bitbench.defenses import QuantizedModel, TrainConfig, create_defense
    from bitbench.defenses.quantized_model import flatten_parameters

    device = torch.device(device)
    rss0 = _rss_mb()
    if model_spec is None:
        ds, model, _ = _lenet_setup(device)
        d = create_defense("rquant")
        d.train(model, ds.train_x[:2000].to(device), ds.train_y[:2000].to(device),
                TrainConfig(epochs=1, device=str(device), progress=False))
        name = "lenet"
    else:
        ds, model = _model_setup(device, model_spec, dataset, None)
        d = create_defense("rquant")
        name = model_spec
        if batch is None and ds.train_y.dim() == 2:
            batch = 8
    model.eval()
    qm = QuantizedModel.from_module(model, d.scheme()).to(device)
    qm.load_into(model)
    flatten_parameters(qm.parameters_of(model))
    flips = flips or (5 if quick else 20)
    attack = create_attack(f"bfa_n{flips}:trials=1,stop=budget" + (f",batch={batch}" if batch else ""))
    data = (ds.attack_x.to(device), ds.attack_y.to(device))
    x, _ = attack_batch(data, attack.batch, attack.seed)
    with torch.no_grad():
        y = model(x).argmax(-1)
    tensors = attacked_tensors(qm, model)
    for p in qm.parameters_of(model):
        p.requires_grad_(True)
    got = {}

    def ours():
        got["ours"] = next(attack.perturbations(qm, model=model, data=data)).trace

    def base():
        got["base"] = _bfa_per_layer(qm, model, x, y, tensors, flips)

    fns = {"ours": ours, "base": base} if baseline else {"ours": ours}
    repeats = 2 if quick or model_spec is not None else 5
    wall, cpu = _timeit_wall_cpu(fns, repeats, sync=_sync(device))
    n_params = sum(q.numel() for q in model.parameters())
    row = {"device": str(device), "model": name, "threads": torch.get_num_threads(), "batch": int(x.shape[0]),
           "flips": flips, "words": qm.n_words}
    if model_spec is not None:
        row.update(params=n_params, fp32_mb=4 * n_params / (1 << 20))
    n = {k: max(1, len(got[k])) for k in got}

    def ms(d, k):
        return 1e3 * d[k] / n[k]

    mine = dict(row, search="bitbench BFA (partial forward, cached ranking)", ms_per_flip=ms(wall, "ours"),
                cpu_ms_per_flip=ms(cpu, "ours"))
    if model_spec is not None:
        mine.update(cpu_ms_per_flip_per_mparam=ms(cpu, "ours") / (n_params / 1e6), peak_rss_mb=_rss_mb(),
                    rss_at_start_mb=rss0, target="per-flip cost at most linear in the parameter count")
    if not baseline:
        return [mine]
    same = [(e["tensor"], e["index"], e["bit"]) for e in got["ours"]] == got["base"]
    mine.update(ratio=ms(wall, "ours") / ms(wall, "base"), cpu_ratio=ms(cpu, "ours") / ms(cpu, "base"),
                same_flips=same)
    if model_spec is None:
        mine["target"] = "<= 1.0x the per-layer search"
    return [mine, dict(row, search="straightforward per-layer search", ms_per_flip=ms(wall, "base"),
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
        df[c] = df[c].map(lambda v, c=c: (f"{v:g}" if c == "p" else f"{v:.3f}") if isinstance(v, float) else v)
    print(f"# {title}")
    print(df.to_markdown(index=False, tablefmt="simple"))
    print()


def main(args) -> int:
    from .context import resolve_device

    what = args.what
    dev = str(resolve_device(args.device))  # cpu, cuda, cuda:N (anything else: a usage error, exit 2)
    spec = getattr(args, "model", None)
    if spec is not None and what not in ("harness", "attacks"):
        from bitbench.configs.errors import UsageError

        raise UsageError(f"perf {what}: --model applies to 'harness' and 'attacks' only")
    sized = {k: getattr(args, k, None) for k in ("n_eval", "batch", "patterns", "p", "flips", "dataset")}
    if spec is None and any(v is not None for k, v in sized.items() if k in ("n_eval", "dataset")):
        from bitbench.configs.errors import UsageError

        raise UsageError("perf: --n-eval and --dataset apply with --model only")
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
        kw = {"patterns": sized["patterns"] or (20 if spec is None else 5),
              "p": sized["p"] if sized["p"] is not None else (0.01 if spec is None else 1e-4)}
        title = "harness: ms per bit-error pattern (LeNet, embedded MNIST test split)"
        if spec is not None:
            kw.update(model_spec=spec, dataset=sized["dataset"], n_eval=sized["n_eval"], batch_size=sized["batch"])
            title = f"harness: ms per bit-error pattern ({spec}, random initialization)"
        _print(perf_harness(dev, quick=args.quick, **kw), args.json, title)
    if what in ("train", "all"):
        _print(perf_train(dev, quick=args.quick), args.json, "train: one step at batch 128")
    if what in ("attacks", "all"):
        if spec is None:
            rows = perf_attacks(dev, quick=args.quick, flips=sized["flips"], batch=sized["batch"])
            title = "attacks: BFA ms per flip (LeNet, batch 128, every weight a candidate) vs a per-layer search"
        else:
            rows = perf_attacks(dev, quick=args.quick, flips=sized["flips"], model_spec=spec,
                                dataset=sized["dataset"], batch=sized["batch"], baseline=not args.no_baseline)
            title = f"attacks: BFA ms per flip ({spec}, random initialization, every weight a candidate)"
        _print(rows, args.json, title)
    return 0
