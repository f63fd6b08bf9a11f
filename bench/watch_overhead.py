"""The watch's own cost: the same training loop with and without a Watcher, in one process, interleaved.

    PYTHONPATH=src python bench/watch_overhead.py [--device auto|cpu|cuda] [--repeats 8] [--steps 20]
                                                 [--batch 128] [--print-every 50] [--record]

Model: ResNet-20 (CIFAR) from trainlab.models, synthetic 32x32 data resident in memory (on the device),
SGD with momentum. Each repeat times `--steps` steps of the bare loop and of the watched loop (the order
alternates between repeats so drift cancels), after warm-up. The watched loop is what a user writes:
`for x, y in w.watch(batches): ...; w.step(loss=loss)`, printing into a sink every `--print-every` steps.
Reports the median step time of each, the overhead (median of the per-repeat ratios, with min and max) by
wall clock and by process CPU time (the sampler thread included), and the watcher's self-timed share. On CUDA it also counts the synchronisations the watched loop causes
(torch.cuda.set_sync_debug_mode): one per `--print-every` steps is the design, from the loss read.
`--record` appends the row to the "## Watch overhead" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from trainlab import Watcher

SECTION = "## Watch overhead"
HEADER = (
    "| date | machine | device | model, batch | steps x repeats | bare ms/step | watched ms/step "
    "| overhead, wall (median [min, max]) | overhead, CPU time | isolated cost | self-timed | syncs / 100 steps "
    "| torch |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)
INTRO = (
    "The monitor's cost on a training step: `bench/watch_overhead.py` runs the same loop with and without\n"
    "`Watcher` in one process, interleaved repeats; overhead is the median of per-repeat ratios (min, max),\n"
    "by wall clock and by process CPU time. On a shared, loaded machine their spread is larger than the\n"
    "effect; the 'isolated cost' column is the robust figure: the watcher's own work per step on an empty\n"
    "loop body (best of 5 x 2000 steps, reductions and memory samples included) plus the sampler thread's\n"
    "CPU share, as a share of the bare step time. Target: below 1% of step time. 'self-timed' is what the\n"
    "watcher measures for its own code inside `step()` during the A/B run.\n\n"
)


def build_model(device: torch.device) -> nn.Module:
    try:
        from trainlab.models import create

        model = create("resnet20", 10)
    except Exception:  # the models module is optional here: a torchvision ResNet-18 at 32 px stands in
        import torchvision

        model = torchvision.models.resnet18(num_classes=10)
    return model.to(device)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def isolated_cost(device: torch.device, print_every: int, steps: int = 2000, repeats: int = 5) -> tuple[float, float]:
    """(watcher seconds per step, sampler thread CPU share): the monitor's own work on an empty loop body,
    best of `repeats` (noise only ever adds time), so a loaded machine cannot hide or inflate it."""
    losses = [torch.rand((), device=device) for _ in range(steps)]
    watcher = Watcher(print_every=print_every, device=device, printer=lambda s: None)

    def plain() -> float:
        t = time.perf_counter()
        for loss in losses:
            loss.add_(0.0)  # the loop body both variants share
        return time.perf_counter() - t

    def watched() -> float:
        watcher.start_epoch()
        t = time.perf_counter()
        for loss in watcher.watch(losses):
            loss.add_(0.0)
            watcher.step(loss=loss, batch_size=128)
        sync(device)
        elapsed = time.perf_counter() - t
        watcher.epoch_end()
        return elapsed

    plain(), watched()
    per_step = (min(watched() for _ in range(repeats)) - min(plain() for _ in range(repeats))) / steps
    t = time.perf_counter()
    for _ in range(50):
        watcher.sampler.sample()
    sampler_share = (time.perf_counter() - t) / 50 / watcher.sampler.interval_s
    watcher.close()
    return max(per_step, 0.0), sampler_share


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--print-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--record", action="store_true", help="append the row to BENCHMARKS.md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )

    torch.manual_seed(0)
    model = build_model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    batches = [
        (
            torch.randn(args.batch, 3, 32, 32, device=device),
            torch.randint(0, 10, (args.batch,), device=device),
        )
        for _ in range(args.steps)
    ]
    loss_fn = nn.CrossEntropyLoss()

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def bare() -> tuple[float, float]:
        sync(device)
        t, cpu = time.perf_counter(), time.process_time()
        for x, y in batches:
            train_step(x, y)
        sync(device)
        return (time.perf_counter() - t) / len(batches), (time.process_time() - cpu) / len(batches)

    cost_s, sampler_share = isolated_cost(device, args.print_every)
    print(f"isolated: {cost_s * 1e6:.1f} us per step in the watcher, sampler thread {sampler_share:.3%} of a core",
          flush=True)
    sink: list[str] = []
    watcher = Watcher(print_every=args.print_every, device=device, printer=sink.append, optimizer=opt)

    def watched() -> tuple[float, float]:
        watcher.start_epoch()
        sync(device)
        t, cpu = time.perf_counter(), time.process_time()
        for x, y in watcher.watch(batches):
            loss = train_step(x, y)
            watcher.step(loss=loss)
        sync(device)
        elapsed = (time.perf_counter() - t) / len(batches), (time.process_time() - cpu) / len(batches)
        watcher.epoch_end()  # once per epoch in real use: outside the per-step timing
        return elapsed

    for _ in range(2):  # warm-up: allocator, kernels, the watcher's first reduction
        bare()
        watched()
    watcher._overhead_s = 0.0
    bare_times, watched_times, ratios, cpu_ratios = [], [], [], []
    for r in range(args.repeats):
        order = (bare, watched) if r % 2 == 0 else (watched, bare)
        result = {fn.__name__: fn() for fn in order}
        bare_times.append(result["bare"][0])
        watched_times.append(result["watched"][0])
        ratios.append(result["watched"][0] / result["bare"][0] - 1.0)
        cpu_ratios.append(result["watched"][1] / result["bare"][1] - 1.0)
        print(
            f"repeat {r}: bare {result['bare'][0] * 1e3:.1f} ms, watched {result['watched'][0] * 1e3:.1f} ms "
            f"(wall {ratios[-1]:+.2%}, CPU time {cpu_ratios[-1]:+.2%})",
            flush=True,
        )
    self_timed = watcher._overhead_s / (sum(watched_times) * args.steps)

    syncs = "n/a"
    if device.type == "cuda":  # count device syncs the watched loop causes, over 2 reduction intervals
        watcher.start_epoch()
        steps = 2 * args.print_every
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(steps):
                x, y = batches[i % len(batches)]
                loss = train_step(x, y)
                watcher.step(loss=loss)
        torch.cuda.set_sync_debug_mode(0)
        watcher.epoch_end()
        syncs = f"{100 * sum('synchroniz' in str(w.message) for w in caught) / steps:.1f}"
    watcher.close()

    bare_ms, watched_ms = statistics.median(bare_times) * 1e3, statistics.median(watched_times) * 1e3
    isolated = f"{cost_s * 1e6:.0f} us/step = {(cost_s * 1e3 / bare_ms + sampler_share) * 100:.3f}%"
    spread = [
        f"{statistics.median(x) * 100:+.2f}% [{min(x) * 100:+.2f}, {max(x) * 100:+.2f}]" for x in (ratios, cpu_ratios)
    ]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    row = (
        f"| {datetime.date.today()} | {machine()} | {device_name} | resnet20, {args.batch} | "
        f"{args.steps} x {args.repeats} | {bare_ms:.1f} | {watched_ms:.1f} | "
        f"{spread[0]} | {spread[1]} | {isolated} | {self_timed * 100:.3f}% | "
        f"{syncs} | {torch.__version__} |"
    )
    command = (
        f"`python bench/watch_overhead.py --device {device.type} --repeats {args.repeats} "
        f"--steps {args.steps} --batch {args.batch} --print-every {args.print_every}"
        + (f" --threads {args.threads}`" if args.threads else "`")
    )
    print(HEADER + row)
    print(f"command: {command}")
    if args.record:
        record(row, command)


def record(row: str, command: str) -> None:
    """Append the row to the section's table, creating the file or the section if needed; others' sections
    are left as they are."""
    path = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    line = f"{row}  <!-- {command} -->\n"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{INTRO}{HEADER}{line}"
    else:  # after the section's last table row, so notes below the table stay below it
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        end = len(text) if nxt == -1 else nxt + 1
        lines = text[start:end].splitlines(keepends=True)
        last_row = max(i for i, ln in enumerate(lines) if ln.startswith("|"))
        lines.insert(last_row + 1, line)
        text = text[:start] + "".join(lines) + text[end:]
    path.write_text(text)
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
