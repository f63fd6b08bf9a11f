"""`trainlab train` against a minimal hand-written PyTorch loop: same model, data, batch size, threads.

What it measures: the steady-state time per training step. For trainlab that is the training phase of
`metrics.csv` (epoch_time_s / batches, which includes the monitor, the step log and the progress
bookkeeping); for the loop it is the same span timed by hand. Epoch 1 is warm-up and dropped. The two
alternate in one process (trainlab, loop, trainlab, loop, ...), because this machine's speed drifts.

    PYTHONPATH=src python bench/train_vs_loop.py [--rounds 3] [--epochs 3] [--record]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainlab.config import load_config
from trainlab.data import build_data
from trainlab.models import create
from trainlab.train.run import train

SETTINGS = ["data.name=shapes", "data.train_size=2560", "data.val_size=512", "data.img_size=32",
            "data.batch_size=128", "model.name=resnet20", "optim.lr=0.1", "run.tensorboard=false",
            "watch.print_every=10", "run.progress=lines", "data.loader=tensor"]  # fmt: skip


def trainlab_step_times(epochs: int, threads: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [*SETTINGS, f"train.epochs={epochs}", f"train.threads={threads}", f"run.dir={tmp}/r"])
        train(cfg)
        with open(Path(tmp) / "r" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
    batches = -(-2560 // 128)
    return [float(r["epoch_time_s"]) / batches for r in rows[1:]]


def loop_step_times(epochs: int, threads: int) -> list[float]:
    """The loop a person writes: same data through the same loader, SGD + cosine, no monitor, no logs."""
    torch.set_num_threads(threads)
    cfg = load_config(None, [*SETTINGS, f"train.epochs={epochs}"])
    torch.manual_seed(0)
    data = build_data(cfg, torch.device("cpu"))
    model = create("resnet20", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(data.train))
    times = []
    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        for images, labels in data.train.batches(epoch):
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        times.append((time.perf_counter() - start) / len(data.train))
        model.eval()
        with torch.no_grad():
            for images, _ in data.val.batches(0):
                model(images)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    ours, theirs, ratios = [], [], []
    for r in range(args.rounds):
        # Alternate which goes first: the machine's speed drifts within a round.
        if r % 2 == 0:
            mine, loop = trainlab_step_times(args.epochs, args.threads), loop_step_times(args.epochs, args.threads)
        else:
            loop, mine = loop_step_times(args.epochs, args.threads), trainlab_step_times(args.epochs, args.threads)
        ours += mine
        theirs += loop
        ratios.append(statistics.median(mine) / statistics.median(loop))
        print(f"round {r + 1}: trainlab {statistics.median(mine) * 1e3:.1f} ms/step, "
              f"loop {statistics.median(loop) * 1e3:.1f} ms/step, ratio {ratios[-1]:.3f}", flush=True)  # fmt: skip
    ratio = statistics.median(ratios)
    print(f"per-round ratios: {', '.join(f'{x:.3f}' for x in ratios)}; median {ratio:.3f}")
    print(f"| ResNet-20, shapes 32px, batch 128, CPU {args.threads} threads | trainlab "
          f"{statistics.median(ours) * 1e3:.1f} ms/step | loop {statistics.median(theirs) * 1e3:.1f} ms/step | "
          f"median per-round ratio {ratio:.3f} (spread trainlab {min(ours) * 1e3:.0f}-{max(ours) * 1e3:.0f}, "
          f"loop {min(theirs) * 1e3:.0f}-{max(theirs) * 1e3:.0f} ms) |")


if __name__ == "__main__":
    main()
