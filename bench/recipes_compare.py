"""Each recipe feature, end to end on `shapes`: a short real run per feature against the same baseline.

One run per row, all with the same model, data, seed and epochs; the table gives final and best val
top-1, final train loss and time. A run this short says that a feature works, not which feature wins.

    PYTHONPATH=src python bench/recipes_compare.py [--out runs/recipes] [--epochs 4]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

BASE = ["data.name=shapes", "data.train_size=4000", "data.val_size=1000", "data.img_size=32", "data.batch_size=64",
        "model.name=resnet20", "optim.lr=0.1", "run.tensorboard=false", "run.progress=none", "watch.print_every=20"]  # fmt: skip

VARIANTS: dict[str, list[str]] = {
    "baseline (sgd, one-cycle, flip-crop)": [],
    "label smoothing 0.1": ["train.label_smoothing=0.1"],
    "mixup 0.2 + cutmix 1.0": ["aug.mixup_alpha=0.2", "aug.cutmix_alpha=1.0", "aug.mix_prob=0.5"],
    "EMA 0.99": ["train.ema_decay=0.99"],
    "adamw + warmup + cosine": ["optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.05",
                                "sched.name=cosine", "sched.warmup_epochs=1"],  # fmt: skip
    "no decay on norm/bias + clip 1.0": ["optim.no_decay_norm_bias=true", "train.clip_grad=1.0"],
    "trivialaugment + erasing (torch loader)": ["aug.policy=trivialaugment", "aug.random_erasing=0.25",
                                                "data.loader=torch"],  # fmt: skip
    "grad accumulation x2 (batch 32)": ["data.batch_size=32", "train.grad_accum=2"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/recipes")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    out = Path(args.out)
    rows = []
    for i, (name, extra) in enumerate(VARIANTS.items()):
        run_dir = out / f"{i:02d}"
        started = time.time()
        cmd = [sys.executable, "-m", "trainlab", "train", *BASE, f"train.epochs={args.epochs}", *extra,
               f"run.dir={run_dir}", f"run.name={name}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.time() - started
        if proc.returncode != 0:
            rows.append((name, "failed", "", "", "", f"{wall:.0f}"))
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        with open(run_dir / "metrics.csv") as f:
            metrics = list(csv.DictReader(f))
        summary = json.loads((run_dir / "summary.json").read_text())
        last = metrics[-1]
        best = f"{summary['best_val_acc1']:.1f} ({summary['best_weights']})"
        rows.append((name, f"{float(last['val_acc1']):.1f}", best, f"{float(last['train_loss']):.3f}",
                     " ".join(extra) or "-", f"{wall:.0f}"))  # fmt: skip
        print(rows[-1], flush=True)
    print("\n| feature | final val top-1 % | best val top-1 % (weights) | final train loss | overrides | wall s |")
    print("| --- | ---: | --- | ---: | --- | ---: |")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
