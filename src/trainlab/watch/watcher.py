"""The Watcher: clocks, loss health and memory trends for any training loop, without syncing the device.

Clocks (per epoch; data + compute + other = epoch time):
  epoch time  from `start_epoch()` (or the first `watch()`/`step()` of the epoch) to the end of the
              `watch()` loop, or to `epoch_end()` when the loop was not wrapped. Validation run between the
              loop's end and `epoch_end()` is reported apart, as `after_loop_s`.
  data        host time blocked in the loader's `next()` (including `iter()`, where workers start).
  compute     on CUDA, device time between CUDA events recorded when a batch is handed over and at `step()`
              (capped at epoch - data); on CPU, host time from a batch's hand-over to the next `next()`
              request, or between `step()` calls when there is no `watch()`.
  other       the rest: launch overhead, host work the device does not cover, time outside the loop body.

Device values are never read per step: losses go into a device buffer and are read with one `.tolist()`
every `print_every` steps; CUDA events are read once the device has passed them.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

import psutil
import torch
from torch import nn

from trainlab.watch import console
from trainlab.watch.cuda_timer import CudaStepTimer
from trainlab.watch.detectors import (
    BottleneckDetector,
    BudgetProgress,
    LeakDetector,
    LossDetectors,
    straggler_events,
)
from trainlab.watch.events import Episode, Event
from trainlab.watch.model_probe import ModelProbe
from trainlab.watch.sampler import MB, SystemSampler, rss_mb
from trainlab.watch.settings import WatchSettings, coerce_settings

_UNSET: Any = object()
_SKIP_FIRST_STEPS = 2  # per epoch: loader warm-up (worker start, first prefetch) is not a bottleneck
_NONFINITE_STEPS_KEPT = 1000
_DEVICE_SLOTS = 1024  # losses kept on the device between reads: one sync per 1024 steps of a long interval


def _batch_size_of(batch: Any) -> Optional[int]:
    """The leading dimension of the first tensor in a batch (tuple, list, dict or tensor); host-side only."""
    for _ in range(3):
        if isinstance(batch, torch.Tensor):
            return int(batch.shape[0]) if batch.dim() else None
        if isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        elif isinstance(batch, dict) and batch:
            batch = next(iter(batch.values()))
        else:
            return None
    return None


def _close_if_alive(ref: weakref.ref) -> None:
    watcher = ref()
    if watcher is not None:
        watcher.close()


class Watcher:
    """A training monitor usable in any loop; the seed monitor's arguments all work.

    Keyword arguments given explicitly override `settings`; the others come from `settings`
    (or the defaults, with print_every=100 like the seed monitor). `planned_steps` (the `step()` calls the run
    will make) and `num_classes` let the watch judge progress against the run's own budget: a hopeless run is
    flagged in its first tenth or so, and slow leaks are reported by their projected time to out-of-memory.
    `lr_at(step)` (the planned LR at a watch step) sizes the LR budget still to come (model_probe.py).
    """

    def __init__(
        self,
        print_every: int = _UNSET,
        show_gpu: bool = _UNSET,
        warn_on_leak: bool = _UNSET,
        warn_on_bottleneck: bool = _UNSET,
        warn_on_variance: bool = _UNSET,
        *,
        settings: Any = None,
        device: torch.device | str | None = None,
        printer: Optional[Callable[[str], None]] = None,
        on_event: Optional[Callable[[Event], None]] = None,
        on_log: Optional[Callable[[dict], None]] = None,
        model: Optional[nn.Module] = None,
        optimizer: Optional[torch.optim.Optimizer] = None,
        rank: int = 0,
        world_size: int = 1,
        verbose: bool = True,
        planned_steps: Optional[int] = None,
        num_classes: Optional[int] = None,
        lr_at: Optional[Callable[[int], float]] = None,
    ) -> None:
        s = coerce_settings(settings) if settings is not None else WatchSettings(print_every=100)
        for name, value in (("print_every", print_every), ("show_gpu", show_gpu), ("warn_on_leak", warn_on_leak),
                            ("warn_on_bottleneck", warn_on_bottleneck), ("warn_on_variance", warn_on_variance)):
            if value is not _UNSET:
                setattr(s, name, value)
        self.settings = s
        self.print_every = int(s.print_every) if s.print_every and s.print_every > 0 else 0
        self.reduce_every = self.print_every or 50  # reductions happen even when nothing is printed
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.on_cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.out = console.Output(printer)
        self.on_event, self.on_log = on_event, on_log
        self.model, self.optimizer = model, optimizer
        if world_size == 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.rank, self.world_size = rank, world_size
        self.verbose = verbose and rank == 0
        # `trainlab train` prints one combined epoch summary of its own and turns this block off.
        self.print_epoch_block = True
        self.enabled = bool(s.enabled)

        self.events: list[Event] = []
        self.nonfinite_steps: list[int] = []
        self.step_count = 0
        self.epoch = 0
        self.steps_per_epoch = 0  # of the last completed epoch
        self.epochs_done = 0
        self._loss_detectors = LossDetectors(s)
        self.planned_steps = int(planned_steps) if planned_steps else None
        self._progress = BudgetProgress(s, self.planned_steps, num_classes)
        self._probe = ModelProbe(s, model, self.planned_steps, num_classes, lr_at)
        self._probe_started = False  # the first batch (or step) has been shown to the probe
        self._update_hook = None
        if optimizer is not None and hasattr(optimizer, "register_step_post_hook"):
            self._update_hook = optimizer.register_step_post_hook(self._probe.count_update)
            self._probe.counts_updates = True
        self._leaks = {"host": LeakDetector(s, "host")}
        if self.on_cuda:
            self._leaks["gpu"] = LeakDetector(s, "gpu")
        self._bottleneck = BottleneckDetector(s, on_cpu=self.device.type == "cpu")
        self._stragglers: dict[int, Episode] = {}
        self._grad_nonfinite_streak = 0
        self._grad_episode = Episode()
        self._loader_info: dict[str, Any] = {}
        self._lr: Optional[float] = None
        self._last_record: dict[str, Any] = {}
        self._totals = Counter()  # run totals: seconds of data/compute/other/epoch, images
        self._overhead_s = 0.0
        self._peak_rss_mb = 0.0
        self._timer = CudaStepTimer(self.device) if self.on_cuda else None
        self._buf: Optional[torch.Tensor] = None
        self._slots: list[torch.Tensor] = []
        self._epoch_open = False
        self._watching = False
        self._last_rss_mb = 0.0
        self._reset_chunk()
        self.sampler = SystemSampler(s.sample_interval_s, self.device if self.on_cuda else None)
        if self.enabled:
            self.sampler.start()
        atexit.register(_close_if_alive, weakref.ref(self))

    # ------------------------------------------------------------------ epochs

    def start_epoch(self, epoch: Optional[int] = None) -> None:
        """Begin an epoch's accounting (optional: `watch()` and `step()` start one implicitly)."""
        if self._epoch_open and self._chunk_sources:
            self._reduce(log=False)  # a new epoch without epoch_end(): keep the losses already seen
        self.epoch = int(epoch) if epoch is not None else self.epoch + 1
        now = time.perf_counter()
        self._epoch_open = True
        self._t_epoch_start = now
        self._t_last_step = now
        self._t_loop_end: Optional[float] = None
        self._t_yield: Optional[float] = None
        self._watching = False
        self._wait_since_step = 0.0
        self._epoch_data_s = 0.0
        self._epoch_compute_host_s = 0.0
        self._epoch_excluded_s = 0.0  # host work inside the loop that is not the step (outside_compute)
        self._epoch_steps = 0
        self._epoch_images = 0
        self._epoch_losses: list[float] = []
        self._epoch_nonfinite = 0
        self._epoch_first_event = len(self.events)
        resumed, self._resumed_epoch = getattr(self, "_resumed_epoch", None), None
        if resumed is not None and resumed["epoch"] == self.epoch:  # continuing an epoch cut by a stop
            self._epoch_steps, self._epoch_images = resumed["steps"], resumed["images"]
            self._epoch_losses, self._epoch_nonfinite = list(resumed["losses"]), resumed["nonfinite"]
            self._epoch_first_event = resumed["first_event"]
        self._batch_size: Optional[int] = None
        self._rss_start = self._sample_memory()
        self._gpu_start = torch.cuda.memory_allocated(self.device) / MB if self.on_cuda else None
        if self._timer is not None:
            self._timer.epoch_reset()
        if resumed is None or resumed["epoch"] != self.epoch:
            self._reset_chunk()

    def watch(self, iterable: Iterable) -> Iterator:
        """Yield from `iterable`, timing how long the loop is blocked waiting for each batch."""
        if not self._epoch_open:
            self.start_epoch()
        if not self.enabled:
            yield from iterable
            return
        self._loader_info = {k: getattr(iterable, k, None) for k in ("num_workers", "pin_memory", "batch_size")}
        self._watching = True
        clock = time.perf_counter
        t_request = clock()
        iterator = iter(iterable)
        try:
            while True:
                if self._t_yield is not None:  # the loop body just finished with the previous batch
                    self._epoch_compute_host_s += t_request - self._t_yield
                    self._t_yield = None
                try:
                    batch = next(iterator)
                except StopIteration:
                    self._t_loop_end = clock()
                    self._add_wait(self._t_loop_end - t_request)
                    return
                t_got = clock()
                self._add_wait(t_got - t_request)
                self._t_yield = t_got
                self._batch_size = _batch_size_of(batch)
                if not self._probe_started:
                    self._start_probe(batch)
                if self._timer is not None:
                    self._timer.mark_start()
                yield batch
                t_request = clock()
        finally:
            if self._t_yield is not None:  # the loop was left with break (or an exception)
                now = clock()
                self._epoch_compute_host_s += now - self._t_yield
                self._t_yield = None
                self._t_loop_end = now

    def _start_probe(self, batch: Any) -> None:
        self._probe_started = True
        for event in self._probe.first_batch(batch, self.step_count, self.epoch):
            self._emit(event)

    def _add_wait(self, seconds: float) -> None:
        self._epoch_data_s += seconds
        self._wait_since_step += seconds

    # ------------------------------------------------------------------ steps

    def step(self, loss: Any = None, batch_size: Optional[int] = None, lr: Optional[float] = None,
             sync_wait_s: Optional[float] = None, grad_norm: Any = None) -> None:
        """Mark the end of an optimizer step. `loss`: a float or a tensor (kept on its device).

        `grad_norm`: the step's total gradient norm (a float or a device tensor, read at the next logging
        step with the losses). Without it the watch reads the gradients still on the model at logging steps,
        which works in loops that call step() before zero_grad().

        `sync_wait_s`: host time of this step spent in calls that wait for the other ranks (under DDP, the
        backward pass that ends in the gradient all-reduce). DDP makes every rank's step equally long, so
        the straggler check compares each rank's own work: step time minus that wait."""
        t = time.perf_counter()
        if not self._epoch_open:
            self.start_epoch()
        self.step_count += 1
        self._epoch_steps += 1
        if not self.enabled:
            return
        if not self._probe_started:  # a loop without watch(): the weights' start is after the first update
            self._start_probe(None)
        wall = t - self._t_last_step
        self._t_last_step = t
        wait, self._wait_since_step = self._wait_since_step, 0.0
        if not self._watching:
            self._epoch_compute_host_s += wall
        images = batch_size if batch_size is not None else self._batch_size
        if images:
            self._epoch_images += images
            self._chunk_images += images
        if lr is not None:
            self._lr = float(lr)
        self._probe.step(self._current_lr())
        if loss is not None:
            self._record_loss(loss)
        else:
            self._chunk_sources.append(0)
        if grad_norm is not None:
            self._record_grad_norm(grad_norm)
        self._chunk_wall_s += wall
        self._chunk_wait_s += wait
        self._chunk_sync_s += sync_wait_s or 0.0
        if self._epoch_steps > _SKIP_FIRST_STEPS and self._watching:
            self._bottleneck.add(wait, wall)
        if self._timer is not None:
            self._timer.mark_end()
        if self.step_count % max(1, self.settings.leak_sample_every) == 0:
            self._sample_memory()
        if self.step_count % self.reduce_every == 0:
            self._reduce(log=True)
        self._overhead_s += time.perf_counter() - t

    def wants_grad_norm(self, steps_ahead: int = 1) -> bool:
        """Whether a logging step falls within the next `steps_ahead` calls of step() (this one included):
        a loop computes the gradient norm only then (it costs a reduction over all gradients)."""
        if not self.enabled:
            return False
        return any((self.step_count + j) % self.reduce_every == 0 for j in range(1, max(1, steps_ahead) + 1))

    @contextlib.contextmanager
    def outside_compute(self, waiting_for_peers: bool = False) -> Iterator[None]:
        """Host work inside the loop that is not the training step (checkpoint writes, stop agreement):
        counted as `other` time, never as compute; with `waiting_for_peers`, also as time spent waiting for
        other ranks, which the straggler check subtracts."""
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self._epoch_excluded_s += spent
            if waiting_for_peers:
                self._chunk_sync_s += spent

    def _record_grad_norm(self, grad_norm: Any) -> None:
        if isinstance(grad_norm, torch.Tensor) and self._buf is not None and self._buf.device == grad_norm.device:
            self._norm_slot.copy_(grad_norm.detach().float().reshape(()))  # read with the losses: no extra sync
            self._chunk_grad_norm: Any = "buffer"
        else:
            self._chunk_grad_norm = float(grad_norm)

    def _record_loss(self, loss: Any) -> None:
        index = len(self._chunk_sources)
        if isinstance(loss, torch.Tensor):
            value = loss.detach()
            if value.dim():
                value = value.reshape(()) if value.numel() == 1 else value.float().mean()
            if self._buf is None or self._buf.device != value.device:
                self._flush_device_losses()
                # One slot per step of the interval (at most _DEVICE_SLOTS: print_every=10**7 made ten million
                # views, 6 GB, and 10**12 asked for a 4 TB buffer), plus one for the latest gradient norm.
                self._buf = torch.zeros(min(self.reduce_every, _DEVICE_SLOTS) + 1, dtype=torch.float32,
                                        device=value.device)  # fmt: skip
                self._slots = list(self._buf.unbind(0))  # views made once: no indexing cost per step
                self._norm_slot = self._slots[-1]
            slot = index % (len(self._slots) - 1)
            if slot == 0 and index:  # a long interval filled the buffer: read it (one sync) before reusing it
                self._flush_device_losses()
            self._slots[slot].copy_(value)  # an async device copy, no sync
            self._chunk_sources.append(1)
        else:
            self._host_losses[index] = float(loss)
            self._chunk_sources.append(2)

    def _flush_device_losses(self) -> None:
        """Read the device buffer into host values (before it is replaced, or to save the interval)."""
        if self._buf is not None and (1 in self._chunk_sources or self._chunk_grad_norm == "buffer"):
            values, slots = self._buf.tolist(), len(self._slots) - 1
            for i, src in enumerate(self._chunk_sources):
                if src == 1:
                    self._host_losses[i] = values[i % slots]
                    self._chunk_sources[i] = 2
            if self._chunk_grad_norm == "buffer":
                self._chunk_grad_norm = values[-1]

    def _reset_chunk(self) -> None:
        self._chunk_sources: list[int] = []  # per step: 0 no loss, 1 in the device buffer, 2 in _host_losses
        self._host_losses: dict[int, float] = {}
        self._chunk_wall_s = 0.0
        self._chunk_wait_s = 0.0
        self._chunk_sync_s = 0.0
        self._chunk_images = 0
        self._chunk_grad_norm = None  # None, a float, or "buffer" (in the device buffer's last slot)

    # ------------------------------------------------------------------ reductions

    def _reduce(self, log: bool) -> None:
        """Read the interval's losses in one transfer, run the detectors, print and log the line."""
        n = len(self._chunk_sources)
        if n == 0:
            return
        first_step = self.step_count - n + 1
        in_buffer = 1 in self._chunk_sources or self._chunk_grad_norm == "buffer"
        device_values = self._buf.tolist() if in_buffer else []  # the one sync of the interval
        slots = max(1, len(self._slots) - 1)
        steps_losses = []
        for i, src in enumerate(self._chunk_sources):
            if src:
                steps_losses.append((first_step + i, device_values[i % slots] if src == 1 else self._host_losses[i]))
        finite = [v for _, v in steps_losses if math.isfinite(v)]
        bad = [s for s, v in steps_losses if not math.isfinite(v)]
        self._epoch_losses += finite
        self._epoch_nonfinite += len(bad)
        self.nonfinite_steps = (self.nonfinite_steps + bad)[-_NONFINITE_STEPS_KEPT:]
        events = self._loss_detectors.feed(steps_losses, self.epoch)
        e = self._progress.feed(steps_losses, self._current_lr(), self.step_count, self.epoch)
        events += [e] if e else []
        events += self._probe.check(self.step_count, self.epoch, list(self._loss_detectors.recent)[-20:])
        given = device_values[-1] if self._chunk_grad_norm == "buffer" else self._chunk_grad_norm
        grad_norm = (given if given is not None else self._grad_norm()) if log else None
        if grad_norm is not None:
            events += self._grad_events(grad_norm)
        if self.settings.warn_on_leak:
            events += self._leak_events()
        if self.settings.warn_on_bottleneck and self._watching:
            e = self._bottleneck.check(self.step_count, self.epoch, self._loader_info)
            events += [e] if e else []
        step_time = self._chunk_wall_s / n
        if log and self.world_size > 1:
            events += self._straggler_events(max(self._chunk_wall_s - self._chunk_sync_s, 0.0) / n)
        record = None
        if log:
            record = self._step_record(n, finite, step_time, grad_norm)
        self._reset_chunk()
        if record is not None:
            self._last_record = record
            if self.verbose and self.print_every:
                self.out.line(console.step_line(record, self.settings.show_gpu))
            if self.on_log is not None:
                self.on_log(record)
        for e in events:
            self._emit(e)

    def _step_record(self, n: int, finite: list[float], step_time: float, grad_norm: Optional[float]) -> dict:
        system = self.sampler.latest
        wall = max(self._chunk_wall_s, 1e-12)
        record: dict[str, Any] = {
            "step": self.step_count,
            "epoch": self.epoch,
            "loss": sum(finite) / len(finite) if finite else None,
            "lr": self._current_lr(),
            "step_time_s": step_time,
            "data_wait_frac": self._chunk_wait_s / wall if self._watching else None,
            "images_per_s": self._chunk_images / wall if self._chunk_images else None,
            "grad_norm": grad_norm,
            "cpu_pct": system.get("cpu_pct"),
            "rss_mb": self._last_rss_mb,
            "ram_pct": system.get("ram_pct"),
            **self._probe.last,
        }
        if self.on_cuda:
            record.update(
                gpu_alloc_mb=torch.cuda.memory_allocated(self.device) / MB,  # host-side counters: no sync
                gpu_reserved_mb=torch.cuda.memory_reserved(self.device) / MB,
                gpu_peak_mb=torch.cuda.max_memory_allocated(self.device) / MB,
                gpu_util_pct=system.get("gpu_util_pct"),
            )
        record["time"] = time.time()
        return record

    def _current_lr(self) -> Optional[float]:
        if self._lr is not None:
            return self._lr
        if self.optimizer is not None and self.optimizer.param_groups:
            lr = self.optimizer.param_groups[0].get("lr")
            return float(lr) if lr is not None else None
        return None

    def _grad_norm(self) -> Optional[float]:
        """Total gradient norm of the last step, read at logging steps only."""
        if self.model is not None:
            params = self.model.parameters()
        elif self.optimizer is not None:
            params = (p for g in self.optimizer.param_groups for p in g["params"])
        else:
            return None
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return None
        norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [g.norm() for g in grads]
        return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms])).item())

    def _grad_events(self, grad_norm: float) -> list[Event]:
        # fp16 loss scaling produces the odd inf gradient and skips that step by design: only a streak counts
        self._grad_nonfinite_streak = 0 if math.isfinite(grad_norm) else self._grad_nonfinite_streak + 1
        if not self._grad_episode.update(1 if self._grad_nonfinite_streak >= 2 else 0):
            return []
        return [Event(
            "nonfinite", "critical", self.step_count, self.epoch,
            f"gradient norm is {grad_norm} at step {self.step_count} (and at the previous logged step): the "
            f"update is poisoning the weights. Lower optim.lr, set train.clip_grad=1.0, or use "
            f"train.precision=bf16/32 instead of fp16.",
            {"grad_norm": str(grad_norm), "source": "grad"},
        )]

    def _sample_memory(self) -> float:
        rss = rss_mb()
        self._last_rss_mb = rss
        self._peak_rss_mb = max(self._peak_rss_mb, rss)
        self._leaks["host"].add(self.step_count, rss)
        if "gpu" in self._leaks:
            self._leaks["gpu"].add(self.step_count, torch.cuda.memory_allocated(self.device) / MB)
        return rss

    def _leak_events(self) -> list[Event]:
        steps_per_epoch = self.steps_per_epoch or self._epoch_steps
        recent_step_s = self._chunk_wall_s / max(len(self._chunk_sources), 1)
        steps_per_s = 1.0 / recent_step_s if recent_step_s > 0 else 0.0
        free = {"host": lambda: psutil.virtual_memory().available / MB, "gpu": self._gpu_free_mb}
        events = []
        remaining = max(self.planned_steps - self.step_count, 0) if self.planned_steps else None
        for source, detector in self._leaks.items():
            e = detector.check(self.step_count, self.epoch, steps_per_epoch, steps_per_s, free[source], remaining)
            events += [e] if e else []
        return events

    def _gpu_free_mb(self) -> Optional[float]:
        try:  # free memory on the device plus what the caching allocator holds but does not use
            free, _ = torch.cuda.mem_get_info(self.device)
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return (free + cached) / MB
        except Exception:
            return None

    def _straggler_events(self, step_time: float) -> list[Event]:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return []
        on = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        mine = torch.tensor([step_time], dtype=torch.float64, device=on)
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)  # one collective per logging interval
        times = [float(t.item()) for t in gathered]
        return straggler_events(times, self.step_count, self.epoch, self.settings.straggler_ratio, self._stragglers)

    def _emit(self, event: Event) -> None:
        self.events.append(event)
        if self.verbose:
            self.out.event(event)
        if self.on_event is not None:
            self.on_event(event)

    # ------------------------------------------------------------------ epoch end

    def epoch_end(self, val_loss: Optional[float] = None, val_acc: Optional[float] = None,
                  num_classes: Optional[int] = None, **extra: Any) -> dict[str, Any]:
        """Close the epoch: time split, throughput, loss mean and trend, memory deltas; prints a summary block.

        `val_acc` may be a fraction or a percentage. Extra keyword arguments are copied into the report.
        """
        t_end = time.perf_counter()
        if not self._epoch_open:
            self.start_epoch()
        t0 = time.perf_counter()
        self._reduce(log=False)
        loop_end = self._t_loop_end if self._watching and self._t_loop_end is not None else t_end
        epoch_time = max(loop_end - self._t_epoch_start, 0.0)
        data = min(self._epoch_data_s, epoch_time)
        if self._timer is not None:  # the device events never span outside_compute() work
            device_time = self._timer.epoch_reset()  # waits for the epoch's last step: once per epoch
            compute = min(device_time, epoch_time - data)
        else:
            device_time = None
            compute = min(max(self._epoch_compute_host_s - self._epoch_excluded_s, 0.0), epoch_time - data)
        other = max(epoch_time - data - compute, 0.0)
        rss = self._sample_memory()
        self._peak_rss_mb = max(self._peak_rss_mb, self.sampler.peak_rss_mb)
        events: list[Event] = []
        if self.settings.warn_on_leak:
            events += self._leak_events()
        if self.planned_steps is None:  # with the budget known, the budget rule below replaces "3 epochs at chance"
            e = self._loss_detectors.epoch_val(self.step_count, self.epoch, val_acc, num_classes)
            events += [e] if e else []
        e = self._progress.epoch_val(self.step_count, self.epoch, val_acc)
        events += [e] if e else []
        for e in events:
            self._emit(e)
        losses = self._epoch_losses
        trend_ratio, trend = self._trend(losses)
        report: dict[str, Any] = {
            "epoch": self.epoch,
            "steps": self._epoch_steps,
            "step": self.step_count,
            "images": self._epoch_images,
            "loss_mean": sum(losses) / len(losses) if losses else None,
            "loss_trend": trend_ratio,
            "loss_trend_label": trend,
            "nonfinite_steps": self._epoch_nonfinite,
            "data_time_s": data,
            "compute_time_s": compute,
            "train_time_s": compute,  # the run-dir name of the same figure
            "other_time_s": other,
            "excluded_time_s": self._epoch_excluded_s,
            "epoch_time_s": epoch_time,
            "after_loop_s": max(t_end - loop_end, 0.0),
            "device_time_s": device_time,
            "images_per_s": self._epoch_images / epoch_time if epoch_time > 0 else 0.0,
            "rss_mb": rss,
            "rss_delta_mb": rss - self._rss_start,
            "peak_rss_mb": self._peak_rss_mb,
            "val_loss": val_loss,
            "val_acc": val_acc,
        }
        if self.on_cuda:
            alloc = torch.cuda.memory_allocated(self.device) / MB
            report.update(gpu_alloc_mb=alloc, gpu_alloc_delta_mb=alloc - (self._gpu_start or 0.0),
                          gpu_peak_mb=torch.cuda.max_memory_allocated(self.device) / MB)
        report["peak_mem_mb"] = report.get("gpu_peak_mb", self._peak_rss_mb)
        counts = Counter(e.kind for e in self.events[self._epoch_first_event:])
        report["events"] = dict(counts)
        report.update(extra)
        for key in ("data_time_s", "compute_time_s", "other_time_s", "epoch_time_s"):
            self._totals[key] += report[key]
        self._totals["images"] += self._epoch_images
        self.steps_per_epoch = self._epoch_steps or self.steps_per_epoch
        self.epochs_done += 1
        self._epoch_open = False
        self._watching = False
        self._overhead_s += time.perf_counter() - t0
        if self.verbose and self.print_epoch_block:
            for line in console.epoch_block(report, self.settings.show_gpu):
                self.out.line(line)
        return report

    @staticmethod
    def _trend(losses: list[float]) -> tuple[Optional[float], str]:
        """Last quarter's mean over the first quarter's: below 0.97 decreasing, above 1.03 increasing."""
        if len(losses) < 4:
            return None, "n/a"
        q = len(losses) // 4
        first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
        if first <= 0:
            return None, "n/a"
        ratio = last / first
        return ratio, "decreasing" if ratio < 0.97 else "increasing" if ratio > 1.03 else "stable"

    # ------------------------------------------------------------------ run level

    def summary(self) -> dict[str, Any]:
        """The run's health figures: event counts, memory peaks, where the time went, the monitor's cost."""
        counts = Counter(e.kind for e in self.events)
        epoch_s = self._totals["epoch_time_s"]
        out: dict[str, Any] = {
            "steps": self.step_count,
            "epochs": self.epochs_done,
            "events": dict(counts),
            "events_by_severity": dict(Counter(e.severity for e in self.events)),
            "nonfinite_steps": len(self.nonfinite_steps),
            "peak_rss_mb": max(self._peak_rss_mb, self.sampler.peak_rss_mb),
            "data_time_s": self._totals["data_time_s"],
            "compute_time_s": self._totals["compute_time_s"],
            "other_time_s": self._totals["other_time_s"],
            "epoch_time_s": epoch_s,
            "data_wait_frac": self._totals["data_time_s"] / epoch_s if epoch_s else None,
            "images_per_s": self._totals["images"] / epoch_s if epoch_s else None,
            "overhead_s": self._overhead_s,
            "overhead_frac": self._overhead_s / epoch_s if epoch_s else None,
            "last_loss": self._last_record.get("loss"),
        }
        if self.on_cuda:
            out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(self.device) / MB
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "step_count": self.step_count,
            "epoch": self.epoch,
            "epochs_done": self.epochs_done,
            "steps_per_epoch": self.steps_per_epoch,
            "events": [e.to_dict() for e in self.events],
            "nonfinite_steps": list(self.nonfinite_steps),
            "loss": self._loss_detectors.state_dict(),
            "leaks": {k: d.state_dict() for k, d in self._leaks.items()},
            "progress": self._progress.state_dict(),
            "probe": self._probe.state_dict(),
            "totals": dict(self._totals),
            "overhead_s": self._overhead_s,
            "interval": self._interval_state(),
            "open_epoch": self._open_epoch_state(),
        }

    def _interval_state(self) -> dict[str, Any]:
        """The logging interval in progress (losses since the last logged step), so a resumed run logs the
        same averages at the same steps. Reads the device buffer: one sync, at checkpoint time only."""
        self._flush_device_losses()
        return {"sources": list(self._chunk_sources), "losses": {str(k): v for k, v in self._host_losses.items()},
                "images": self._chunk_images, "grad_norm": self._chunk_grad_norm}  # fmt: skip

    def _open_epoch_state(self) -> Optional[dict[str, Any]]:
        if not self._epoch_open:
            return None
        return {"epoch": self.epoch, "steps": self._epoch_steps, "images": self._epoch_images,
                "losses": list(self._epoch_losses), "nonfinite": self._epoch_nonfinite,
                "first_event": self._epoch_first_event}  # fmt: skip

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.step_count = d["step_count"]
        self.epoch = d["epoch"]
        self.epochs_done = d.get("epochs_done", 0)
        self.steps_per_epoch = d["steps_per_epoch"]
        self.events = [Event.from_dict(e) for e in d["events"]]
        self.nonfinite_steps = list(d["nonfinite_steps"])
        self._loss_detectors.load_state_dict(d["loss"])
        for key, state in d["leaks"].items():
            if key in self._leaks:
                self._leaks[key].load_state_dict(state)
        if d.get("progress") is not None:
            self._progress.load_state_dict(d["progress"])
        if d.get("probe") is not None:
            self._probe.load_state_dict(d["probe"])
        self._probe_started = self.step_count > 0
        self._totals = Counter(d.get("totals", {}))
        self._overhead_s = d.get("overhead_s", 0.0)
        self._epoch_open = False
        self._reset_chunk()
        interval = d.get("interval")
        if interval:
            self._chunk_sources = list(interval["sources"])
            self._host_losses = {int(k): v for k, v in interval["losses"].items()}
            self._chunk_images = interval["images"]
            self._chunk_grad_norm = interval["grad_norm"]
        self._resumed_epoch = d.get("open_epoch")

    def close(self) -> None:
        self.sampler.stop()
        if self._update_hook is not None:
            self._update_hook.remove()
            self._update_hook = None

    def __del__(self) -> None:  # a watcher dropped without close() must not leave its thread polling
        sampler = getattr(self, "sampler", None)
        if sampler is not None:
            sampler.stop(join=False)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
