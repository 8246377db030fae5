"""Launched by tests/test_distributed.py under torchrun (2 gloo processes): a few DDP training steps of RandBET.

Writes, per rank, the flat parameters and the RandBET curriculum/pattern seeds to OUT_DIR/rank<r>.pt.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from bitbench.data import load_dataset
from bitbench.models import build_model
from bitbench.defenses import TrainConfig, create_defense


def main(out_dir):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    ds = load_dataset("mnist5k")
    x, y = ds.train_x[:512], ds.train_y[:512]
    model = build_model("lenet", num_classes=10, in_channels=1, image_size=28, mean=ds.mean, std=ds.std, seed=0)
    if rank == 1:  # start rank 1 from different weights: DDP must broadcast rank 0's
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
    defense = create_defense("randbet:p=0.05,threshold=none")
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=3, progress=False)
    trainer = defense.trainer(model, cfg, num_classes=10, wrap=lambda m: DDP(m))
    seeds = []
    orig = trainer.step.draw_seed

    def spy():
        s = orig()
        seeds.append(s)
        return s

    trainer.step.draw_seed = spy
    hist = trainer.fit(x, y, checkpoint=os.path.join(out_dir, "ckpt.pt"), key="k")
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.save({"flat": flat, "seeds": seeds, "history": hist}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
