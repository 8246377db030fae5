"""Does CPU training depend on the torch thread count? Which operations differ?

Trains a defense of a suite (default: RQuant on the embedded default suite, LeNet on MNIST-5k, 2 epochs) once per
thread count and compares the weights bit for bit; then runs one batch forward and backward through the model
under each thread count and lists the operations whose outputs or gradients are not bit-identical.

    python scripts/thread_determinism.py [--defense rquant] [--epochs 2] [--threads 1,2] [--fixed 1]

Part 2 trains with ``TrainConfig.threads`` set to each of ``--threads`` (how much the thread count moves the
weights); part 3 trains with the recipe's fixed ``TrainConfig.threads = --fixed`` while the process is set to each of
``--threads`` (the weights must be identical). The output is plain text; counts, not timings (the machine may be
shared).
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from bitbench.configs.registries import create_defense
from bitbench.configs.suite import load_suite
from bitbench.data import load_dataset
from bitbench.defenses import TrainConfig
from bitbench.models import build_model


def build(suite, ds):
    return build_model(suite.model, num_classes=ds.num_classes, in_channels=ds.train_x.shape[1],
                       image_size=ds.train_x.shape[-1], mean=ds.mean, std=ds.std, seed=suite.train_seed,
                       **dict(suite.model_options))


def train_once(suite, ds, defense_spec: str, epochs: int, process_threads: int, train_threads: int):
    torch.set_num_threads(process_threads)
    cfg = TrainConfig.from_dict(dict(suite.train, epochs=epochs, seed=suite.train_seed, progress=False,
                                     threads=train_threads))
    model = build(suite, ds)
    create_defense(defense_spec).train(model, ds.train_x, ds.train_y, cfg, num_classes=ds.num_classes)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def compare_weights(a: dict, b: dict) -> list[tuple[str, int, int, float]]:
    rows = []
    for k in a:
        ne = (a[k] != b[k])
        diff = (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0
        rows.append((k, int(ne.sum()), a[k].numel(), diff))
    return rows


def op_trace(model, x, y, threads: int) -> dict:
    """Outputs of every leaf module, the gradient of the loss w.r.t. each of them and every parameter's
    gradient, with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    outs: dict = {}
    hooks = []
    for name, m in model.named_modules():
        if len(list(m.children())) == 0:
            def hook(mod, inp, out, name=name):
                out = out.clone() if isinstance(out, torch.Tensor) else out
                if isinstance(out, torch.Tensor) and out.requires_grad:
                    out.retain_grad()
                outs[name] = out
                return out
            hooks.append(m.register_forward_hook(hook))
    xin = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(xin), y)
    loss.backward()
    for h in hooks:
        h.remove()
    rec = {"loss": loss.detach().reshape(1)}
    for name, out in outs.items():
        rec[f"forward {name} ({type(dict(model.named_modules())[name]).__name__})"] = out.detach()
        if out.grad is not None:
            rec[f"grad wrt output of {name}"] = out.grad.detach()
    rec["grad wrt input"] = xin.grad.detach()
    for name, p in model.named_parameters():
        if p.grad is not None:
            rec[f"grad {name}"] = p.grad.detach().clone()
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="default")
    ap.add_argument("--defense", default="rquant")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", default="1,2", help="thread counts to compare, comma separated")
    ap.add_argument("--fixed", type=int, default=1, help="the recipe's fixed thread count of part 3")
    ap.add_argument("--batch", type=int, default=128, help="batch size of the per-operation trace")
    args = ap.parse_args(argv)
    counts = [int(t) for t in args.threads.split(",")]
    suite = load_suite(args.suite)
    ds = load_dataset(suite.dataset)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, mkldnn "
          f"{torch.backends.mkldnn.is_available()}; suite {suite.name}, {suite.model}, defense {args.defense}, "
          f"{args.epochs} epochs")

    # 1. per-operation trace on the untrained model (float weights: the ops, not the quantizer)
    model = build(suite, ds)
    x, y = ds.train_x[:args.batch], ds.train_y[:args.batch]
    traces = {t: op_trace(model, x, y, t) for t in counts}
    base = traces[counts[0]]
    print(f"\none batch of {args.batch}, forward + backward, {counts[0]} vs other thread counts:")
    for t in counts[1:]:
        for k, v in base.items():
            w = traces[t][k]
            n = int((v != w).sum())
            if n:
                print(f"  {t} threads  DIFFERS  {k}: {n} of {v.numel()} values, max |diff| "
                      f"{(v.double() - w.double()).abs().max().item():.3g}")
        same = sum(1 for k, v in base.items() if torch.equal(v, traces[t][k]))
        print(f"  {t} threads: {same} of {len(base)} traced tensors bit-identical")

    # 2. whole training with TrainConfig.threads = each count; 3. with the recipe's fixed count
    for part, train_threads in (("TrainConfig.threads = the count", None), (f"TrainConfig.threads = {args.fixed}, "
                                                                             "process at the count", args.fixed)):
        weights = {t: train_once(suite, ds, args.defense, args.epochs, t, t if train_threads is None else
                                 train_threads) for t in counts}
        for t in counts[1:]:
            rows = compare_weights(weights[counts[0]], weights[t])
            total = sum(r[1] for r in rows)
            n = sum(r[2] for r in rows)
            print(f"\ntrained weights ({part}), {counts[0]} vs {t} threads: {total} of {n} values differ")
            for k, ne, size, diff in rows:
                if ne:
                    print(f"  {k:28s} {ne:7d} / {size:7d} differ, max |diff| {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
