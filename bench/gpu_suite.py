"""GPU benchmarks for BENCHMARKS.md, in one command on a machine with a CUDA GPU:

    PYTHONPATH=src python bench/gpu_suite.py [--epochs 3] [--skip-compile] [--json results.json]

1. ResNet-18 (CIFAR stem) on a CIFAR-10-format fixture (50,000 random 32x32 images), through the real
   `trainlab train` CLI, time per epoch from its metrics.csv (the last epoch: warm-up and compilation done):
     - seed-002-style: eager fp32, NCHW, classic DataLoader (per-sample transforms, 4 workers), batch 128;
     - trainlab defaults (tensor loader, bf16 autocast, channels_last, cudnn.benchmark), batch 128 and 512;
     - trainlab defaults + train.compile=max-autotune, batch 512.
2. ResNet-50 at 224 px on synthetic images on the GPU: training images/s (bf16, channels_last, SGD),
   eager and torch.compile.
MFU = images/s x training FLOPs per image (torch.utils.flop_counter, forward + backward) / the device's
dense bf16 peak (table below; fp32 rows are also divided by the bf16 peak, so they show what is left
on the table). `--smoke` runs the same plumbing tiny and on the CPU, to check the script itself.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader_cpu import write_cifar_fixture  # noqa: E402  (a sibling script, not a package)
from trainlab import models  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' data sheets. Matched in order
# against torch.cuda.get_device_name(); the first hit wins, so specific names come before general ones.
PEAK_BF16_FLOPS = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16: no bf16 on Volta
]


def peak_flops(device_name: str) -> float | None:
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def train_flops_per_image(
    name: str, num_classes: int, size: int, cifar_stem: bool, device: torch.device
) -> float:
    """Forward + backward FLOPs of one image, counted by torch's FlopCounterMode on a batch of 2."""
    from torch.utils.flop_counter import FlopCounterMode

    model = models.create(name, num_classes, cifar_stem=cifar_stem).to(device)
    images = torch.randn(2, 3, size, size, device=device)
    labels = torch.zeros(2, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / 2


def run_trainlab(label: str, overrides: list[str], run_dir: Path, timeout_s: int) -> dict:
    """`trainlab train ...` in a subprocess; the last epoch's row of metrics.csv."""
    cmd = [sys.executable, "-m", "trainlab", "train", *overrides, f"run.dir={run_dir}", "run.progress=none"]
    print(f"[{label}] {' '.join(cmd[3:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"[{label}] trainlab train exited {proc.returncode}:\n{tail}")
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    last = rows[-1]
    result = {
        "label": label,
        "overrides": overrides,
        "epochs": len(rows),
        "epoch_time_s": float(last["epoch_time_s"]),
        "images_per_s": float(last["images_per_s"]),
        "first_epoch_time_s": float(rows[0]["epoch_time_s"]),
        "val_acc1": float(last["val_acc1"]) if last.get("val_acc1") else None,
        "wall_s": time.perf_counter() - started,
    }
    print(
        f"[{label}] last epoch {result['epoch_time_s']:.2f} s, {result['images_per_s']:,.0f} images/s",
        flush=True,
    )
    return result


def resnet50_images_per_s(
    device: torch.device, batch: int, size: int, steps: int, compile_mode: str | None
) -> float:
    """Training throughput on synthetic images already on the device (no input pipeline in the way)."""
    torch.backends.cudnn.benchmark = True
    model = models.create("resnet50", 1000).to(device, memory_format=torch.channels_last)
    step_model = torch.compile(model, mode=compile_mode) if compile_mode else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)
    use_bf16 = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = F.cross_entropy(step_model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(max(3, steps // 5)):  # warm-up: cudnn autotune, compilation
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description="GPU benchmarks for BENCHMARKS.md")
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs per ResNet-18 run (the last is reported)"
    )
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script only")
    args = parser.parse_args()

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        print(
            "bench/gpu_suite.py needs a CUDA GPU (use --smoke to check the script on the CPU)",
            file=sys.stderr,
        )
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    device_name = "CPU (smoke test)" if smoke else torch.cuda.get_device_name(device)
    peak = None if smoke else peak_flops(device_name)
    images = 2_000 if smoke else args.images
    epochs = 1 if smoke else args.epochs
    # smoke: a few small steps on the CPU; these come last, so they override the variants' batch sizes
    limit = ["train.max_steps_per_epoch=2", "train.device=cpu", "data.batch_size=16"] if smoke else []

    results: dict = {"device": device_name, "peak_bf16_flops": peak, "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "date": datetime.date.today().isoformat(),
                     "command": " ".join(["PYTHONPATH=src python bench/gpu_suite.py", *sys.argv[1:]])}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cifar"
        write_cifar_fixture(root, images, test_images=100 if smoke else 10_000)
        common = ["data.name=cifar10", f"data.root={root}", "model.name=resnet18", "model.cifar_stem=true",
                  f"train.epochs={epochs}", "optim.lr=0.1", "run.tensorboard=false"]  # fmt: skip
        variants = [
            ("seed-002 style: eager fp32, DataLoader 4 workers, batch 128",
             ["data.loader=torch", "data.num_workers=4", "data.batch_size=128", "train.precision=32",
              "train.channels_last=false"]),
            ("trainlab defaults, batch 128", ["data.batch_size=128"]),
            ("trainlab defaults, batch 512", ["data.batch_size=512"]),
        ]  # fmt: skip
        if not args.skip_compile and not smoke:
            variants.append(("trainlab defaults + compile=max-autotune, batch 512",
                             ["data.batch_size=512", "train.compile=max-autotune"]))  # fmt: skip
        flops18 = train_flops_per_image("resnet18", 10, 32, True, device)
        rows = []
        for i, (label, extra) in enumerate(variants):
            row = run_trainlab(label, [*common, *extra, *limit], Path(tmp) / f"run{i}", timeout_s=3600)
            row["mfu"] = row["images_per_s"] * flops18 / peak if peak else None
            rows.append(row)
        base = rows[0]["epoch_time_s"]
        for row in rows:
            row["speedup_vs_seed002"] = base / row["epoch_time_s"]
        results["resnet18_cifar"] = {"train_flops_per_image": flops18, "runs": rows}

    size, batch, steps = (64, 8, 3) if smoke else (224, 256, 50)
    flops50 = train_flops_per_image("resnet50", 1000, size, False, device)
    rn50 = []
    for mode in [None] + ([] if args.skip_compile or smoke else ["max-autotune-no-cudagraphs"]):
        ips = resnet50_images_per_s(device, batch, size, steps, mode)
        rn50.append({"compile": mode or "none", "batch": batch, "images_per_s": ips,
                     "mfu": ips * flops50 / peak if peak else None})  # fmt: skip
        print(f"[resnet50 {size}px, compile={mode or 'none'}] {ips:,.0f} images/s", flush=True)
    results["resnet50_synthetic"] = {"img_size": size, "train_flops_per_image": flops50, "runs": rn50}

    print_markdown(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def print_markdown(results: dict) -> None:
    pct = lambda v: f"{100 * v:.1f}%" if v is not None else "n/a"  # noqa: E731
    print()
    print(f"- device: {results['device']} (dense bf16 peak {results['peak_bf16_flops'] or 'unknown'} FLOP/s); "
          f"host {platform.node()}, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"- command: `{results['command']}`; date {results['date']}; torch {results['torch']}, "
          f"torchvision {results['torchvision']}")  # fmt: skip
    r18 = results["resnet18_cifar"]
    print(f"\nResNet-18 (CIFAR stem), CIFAR-10-format data, {r18['train_flops_per_image'] / 1e9:.2f} GFLOP "
          "per training image; last epoch of each run:\n")  # fmt: skip
    print("| setup | epoch time (s) | images/s | MFU | speed-up vs seed-002 style |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in r18["runs"]:
        print(f"| {row['label']} | {row['epoch_time_s']:.2f} | {row['images_per_s']:,.0f} | {pct(row['mfu'])} | "
              f"{row['speedup_vs_seed002']:.1f}x |")  # fmt: skip
    r50 = results["resnet50_synthetic"]
    print(f"\nResNet-50, {r50['img_size']} px synthetic input on the device, bf16 autocast, channels_last, "
          f"{r50['train_flops_per_image'] / 1e9:.1f} GFLOP per training image:\n")  # fmt: skip
    print("| compile | batch | images/s | MFU |")
    print("| --- | ---: | ---: | ---: |")
    for row in r50["runs"]:
        print(f"| {row['compile']} | {row['batch']} | {row['images_per_s']:,.0f} | {pct(row['mfu'])} |")


if __name__ == "__main__":
    sys.exit(main())
