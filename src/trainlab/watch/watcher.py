"""The Watcher: clocks, loss health and memory trends for any training loop, without syncing the device.

Clocks (per epoch; data + compute + other = epoch time; clocks.py):
  epoch time  from `start_epoch()` (or the first `watch()`/`step()` of the epoch) to the end of the
              `watch()` loop, or to `epoch_end()` when the loop was not wrapped. Validation run between the
              loop's end and `epoch_end()` is reported apart, as `after_loop_s`.
  data        host time blocked in the loader's `next()` (including `iter()`, where workers start).
  compute     on CUDA, device time between CUDA events recorded when a batch is handed over and at `step()`
              (capped at epoch - data); on CPU, host time from a batch's hand-over to the next `next()`
              request, or between `step()` calls when there is no `watch()`.
  other       the rest: launch overhead, host work the device does not cover, time outside the loop body.

Device values are never read per step: losses go into a device buffer (interval.py) and are read with one
`.tolist()` every `print_every` steps; CUDA events are read once the device has passed them. At each such
reduction the detectors (detectors.py, model_probe.py, memory.py, grad_norm.py, stragglers.py) see host
numbers and return events; reports.py builds what is printed and logged.
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

import torch
from torch import nn

from trainlab.watch import console
from trainlab.watch.advice import Advice
from trainlab.watch.budget import BudgetProgress
from trainlab.watch.clocks import EpochClock
from trainlab.watch.cuda_timer import CudaStepTimer
from trainlab.watch.detectors import BottleneckDetector, LossDetectors
from trainlab.watch.events import Event
from trainlab.watch.grad_norm import GradNormCheck, read_grad_norm
from trainlab.watch.interval import Interval
from trainlab.watch.memory import MemoryWatch
from trainlab.watch.model_probe import ModelProbe
from trainlab.watch.reports import TIME_KEYS, EpochTally, epoch_report, run_summary, step_record
from trainlab.watch.sampler import MB, SystemSampler
from trainlab.watch.settings import WatchSettings, coerce_settings
from trainlab.watch.stragglers import StragglerCheck

_UNSET: Any = object()
_SKIP_FIRST_STEPS = 2  # per epoch: loader warm-up (worker start, first prefetch) is not a bottleneck
_NONFINITE_STEPS_KEPT = 1000


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


def _resolve_device(device: torch.device | str | None) -> torch.device:
    """The device the loop trains on (CUDA when there is one), with its index: its memory is what is watched."""
    resolved = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if resolved.type == "cuda" and resolved.index is None and torch.cuda.is_available():
        resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _close_if_alive(ref: weakref.ref) -> None:
    watcher = ref()
    if watcher is not None:
        watcher.close()


class Watcher:
    """A training monitor usable in any loop; the seed monitor's arguments all work.

    Keyword arguments given explicitly override `settings`; the others come from `settings`
    (or the defaults, with print_every=100 like the seed monitor). `planned_steps` (the `step()` calls the run
    will make: its optimizer steps) and `num_classes` let the watch judge progress against the run's own budget: a hopeless run is
    flagged in its first tenth or so, and slow leaks are reported by their projected time to out-of-memory.
    `lr_at(step)` (the planned LR at a watch step) sizes the LR budget still to come (model_probe.py).
    `advice`: how fixes are named, "code" (the default: your loop's `lr=`, `DataLoader(num_workers=...)`) or
    "trainlab" (config keys; `trainlab train` passes it).
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
        advice: str = "code",
    ) -> None:
        s = coerce_settings(settings) if settings is not None else WatchSettings(print_every=100)
        for name, value in (("print_every", print_every), ("show_gpu", show_gpu), ("warn_on_leak", warn_on_leak),
                            ("warn_on_bottleneck", warn_on_bottleneck), ("warn_on_variance", warn_on_variance)):
            if value is not _UNSET:
                setattr(s, name, value)
        self.settings = s
        self.print_every = int(s.print_every) if s.print_every and s.print_every > 0 else 0
        self.reduce_every = self.print_every or 50  # reductions happen even when nothing is printed
        self.device = _resolve_device(device)
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
        self.planned_steps = int(planned_steps) if planned_steps else None
        self.advice = a = Advice(advice)
        self._loss_detectors = LossDetectors(s, a, num_classes)
        self._progress = BudgetProgress(s, self.planned_steps, num_classes, a)
        self._probe = ModelProbe(s, model, self.planned_steps, num_classes, lr_at, a)
        self._probe_started = False  # the first batch (or step) has been shown to the probe
        self._update_hook = None
        if optimizer is not None and hasattr(optimizer, "register_step_post_hook"):
            self._update_hook = optimizer.register_step_post_hook(self._probe.count_update)
            self._probe.counts_updates = True
        self._memory = MemoryWatch(s, self.device, self.on_cuda)
        self._bottleneck = BottleneckDetector(s, on_cpu=self.device.type == "cpu", advice=a)
        self._stragglers = StragglerCheck(s.straggler_ratio, self.device, a)
        self._grad_check = GradNormCheck(a)
        self._loader_info: dict[str, Any] = {}
        self._loader_len = 0
        self._lr: Optional[float] = None
        self._last_record: dict[str, Any] = {}
        self._totals = Counter()  # run totals: seconds of data/compute/other/epoch, images
        self._overhead_s = 0.0
        self._timer = CudaStepTimer(self.device) if self.on_cuda else None
        self._interval = Interval(self.reduce_every)
        self._clock = EpochClock()
        self._tally = EpochTally()
        self._resumed_epoch: Optional[dict[str, Any]] = None  # an epoch cut by a stop, from load_state_dict
        self._epoch_open = False
        self._closed = False
        self._not_learning_said = False  # a not_learning finding still standing (no epoch above chance since)
        self._batch_size: Optional[int] = None
        self._micro_images = 0  # images of the micro-batches since the last step() (gradient accumulation)
        self.sampler = SystemSampler(s.sample_interval_s, self.device if self.on_cuda else None)
        if self.enabled:
            self.sampler.start()
        atexit.register(_close_if_alive, weakref.ref(self))

    # ------------------------------------------------------------------ epochs

    def start_epoch(self, epoch: Optional[int] = None) -> None:
        """Begin an epoch's accounting (optional: `watch()` and `step()` start one implicitly)."""
        if self._epoch_open and len(self._interval):
            self._reduce(log=False)  # a new epoch without epoch_end(): keep the losses already seen
        self.epoch = int(epoch) if epoch is not None else self.epoch + 1
        self._epoch_open = True
        self._clock.start()
        resumed, self._resumed_epoch = self._resumed_epoch, None
        if resumed is not None and resumed["epoch"] == self.epoch:  # continuing an epoch cut by a stop
            self._tally = EpochTally.from_state(resumed)
        else:
            self._tally = EpochTally(epoch=self.epoch, first_event=len(self.events))
            self._interval.reset()
        self._batch_size = None
        self._memory.epoch_start(self.step_count)
        if self._timer is not None:
            self._timer.epoch_reset()

    def watch(self, iterable: Iterable) -> Iterator:
        """Yield from `iterable`, timing how long the loop is blocked waiting for each batch."""
        if not self._epoch_open:
            self.start_epoch()
        if not self.enabled:
            yield from iterable
            return
        self._loader_info = {k: getattr(iterable, k, None) for k in ("num_workers", "pin_memory", "batch_size")}
        try:
            self._loader_len = len(iterable)  # type: ignore[arg-type]
        except TypeError:  # a generator or an iterable dataset
            self._loader_len = 0
        with contextlib.closing(self._clock.timed(iterable)) as batches:
            for batch in batches:
                self._batch_size = _batch_size_of(batch)
                if not self._probe_started:
                    self._start_probe(batch)
                if self._timer is not None:
                    self._timer.mark_start()
                yield batch

    def _start_probe(self, batch: Any) -> None:
        self._probe_started = True
        for event in self._probe.first_batch(batch, self.step_count, self.epoch):
            self._emit(event)

    # ------------------------------------------------------------------ steps

    def step(self, loss: Any = None, batch_size: Optional[int] = None, lr: Optional[float] = None,
             sync_wait_s: Optional[float] = None, grad_norm: Any = None) -> None:
        """Mark the end of an optimizer step: the watch's step is the optimizer's, whatever the accumulation
        (under gradient accumulation call `micro_batch()` after each micro-batch that does not end a step, and
        give `loss` as the window's mean and `batch_size` as its images). `loss`: a float or a tensor (kept on
        its device).

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
        self._tally.steps += 1
        if not self.enabled:
            return
        if not self._probe_started:  # a loop without watch(): the weights' start is after the first update
            self._start_probe(None)
        wall, wait = self._clock.step(t)
        images = batch_size if batch_size is not None else (self._batch_size or 0) + self._micro_images or None
        self._micro_images = 0
        interval = self._interval
        if images:
            self._tally.images += images
            interval.images += images
        if lr is not None:
            self._lr = float(lr)
        self._probe.step(self._current_lr())
        interval.add_loss(loss)
        if grad_norm is not None:
            interval.add_grad_norm(grad_norm)
        interval.wall_s += wall
        interval.wait_s += wait
        interval.sync_s += sync_wait_s or 0.0
        if self._tally.steps > _SKIP_FIRST_STEPS and self._clock.watching:
            self._bottleneck.add(wait, wall)
        if self._timer is not None:
            self._timer.mark_end()
        sample_every = max(1, self.settings.leak_sample_every)
        if self.step_count % sample_every == 0:  # host numbers only: judged between the (rarer) loss reads
            self._memory.sample(self.step_count)
            for e in self._host_events(leaks=self.step_count % (10 * sample_every) == 0):  # leaks: every 100
                self._emit(e)
        if self.step_count % self.reduce_every == 0:
            self._reduce(log=True)
        self._overhead_s += time.perf_counter() - t

    def micro_batch(self) -> None:
        """The end of a micro-batch that does not end an optimizer step (gradient accumulation): its device
        time is timed and its images counted with the step; the step itself is counted at `step()`."""
        if not self.enabled:
            return
        self._micro_images += self._batch_size or 0
        if self._timer is not None:
            self._timer.mark_end()

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
            self._clock.excluded_s += spent
            if waiting_for_peers:
                self._interval.sync_s += spent

    # ------------------------------------------------------------------ reductions

    def _reduce(self, log: bool) -> None:
        """Read the interval's losses in one transfer, run the detectors, print and log the line."""
        interval, n, step, epoch = self._interval, len(self._interval), self.step_count, self.epoch
        if n == 0:
            return
        steps_losses, given_norm = interval.read(step)  # the one sync of the interval
        finite = [v for _, v in steps_losses if math.isfinite(v)]
        bad = [s for s, v in steps_losses if not math.isfinite(v)]
        self._tally.losses += finite
        self._tally.nonfinite += len(bad)
        self.nonfinite_steps = (self.nonfinite_steps + bad)[-_NONFINITE_STEPS_KEPT:]
        events = self._loss_detectors.feed(steps_losses, epoch)
        e = self._progress.feed(steps_losses, self._current_lr(), step, epoch)
        events += [e] if e else []
        events += self._probe.check(step, epoch, list(self._loss_detectors.recent)[-20:])
        grad_norm = (given_norm if given_norm is not None else read_grad_norm(self.model, self.optimizer)) if log else None
        if grad_norm is not None:
            events += self._grad_check.events(grad_norm, step, epoch)
        events += self._host_events(leaks=True)
        step_time = interval.wall_s / n
        if log and self.world_size > 1:
            events += self._stragglers.events(max(interval.wall_s - interval.sync_s, 0.0) / n, step, epoch)
        if log:
            self._last_record = record = step_record(
                step, epoch, finite, self._current_lr(), step_time, interval, self._clock.watching, grad_norm,
                self.sampler.latest, self._memory.last_rss_mb, self._probe.last, self._memory.step_figures())
            if self.verbose and self.print_every:
                self.out.line(console.step_line(record, self.settings.show_gpu))
            if self.on_log is not None:
                self.on_log(record)
        interval.reset()
        for e in events:
            self._emit(e)

    def _current_lr(self) -> Optional[float]:
        if self._lr is not None:
            return self._lr
        if self.optimizer is not None and self.optimizer.param_groups:
            lr = self.optimizer.param_groups[0].get("lr")
            return float(lr) if lr is not None else None
        return None

    def _host_events(self, leaks: bool) -> list[Event]:
        """The checks on host numbers (memory samples, loader waits): no device read, so they need not wait for
        the interval's loss read."""
        events = self._leak_events() if leaks and self.settings.warn_on_leak else []
        if self.settings.warn_on_bottleneck and self._clock.watching:
            e = self._bottleneck.check(self.step_count, self.epoch, self._loader_info,
                                       self._loader_len or self.steps_per_epoch or self._tally.steps)
            events += [e] if e else []
        return events

    def _leak_events(self) -> list[Event]:
        recent_step_s = self._interval.wall_s / max(len(self._interval), 1)
        remaining = max(self.planned_steps - self.step_count, 0) if self.planned_steps else None
        return self._memory.leak_events(self.step_count, self.epoch, self.steps_per_epoch or self._tally.steps,
                                        1.0 / recent_step_s if recent_step_s > 0 else 0.0, remaining)

    def add_event(self, event: Event, announce: bool = True) -> None:
        """An event from outside the detectors (the run's config smells, its stops): kept, counted and passed to
        on_event like the watch's own; printed unless `announce=False` (the caller prints it)."""
        self._emit(event, announce)

    def warning_counts(self, epoch: Optional[int] = None) -> dict[str, int]:
        """Warnings and critical events by kind, of the run or of one epoch: the count every place shows."""
        return dict(Counter(e.kind for e in self.events if e.severity in ("warning", "critical")
                            and (epoch is None or e.epoch == epoch)))

    def _emit(self, event: Event, announce: bool = True) -> None:
        self.events.append(event)
        self._not_learning_said |= event.kind == "not_learning"
        if self.verbose and announce:
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
        times = self._clock.split(t_end, self._timer)
        memory = self._memory.epoch_figures(self.step_count, self.sampler.peak_rss_mb)
        events = self._leak_events() if self.settings.warn_on_leak else []
        events += self._epoch_not_learning(val_acc, num_classes, val_loss)
        for e in events:
            self._emit(e)
        tally = self._tally
        report = epoch_report(tally, self.step_count, times, memory, self._memory.gpu_figures(),
                              self.warning_counts(tally.epoch), val_loss, val_acc, extra)
        for key in TIME_KEYS:
            self._totals[key] += report[key]
        self._totals["images"] += tally.images
        self.steps_per_epoch = tally.steps or self.steps_per_epoch
        self.epochs_done += 1
        self._epoch_open = False
        self._clock.watching = False
        self._overhead_s += time.perf_counter() - t0
        if self.verbose and self.print_epoch_block:
            for line in console.epoch_block(report, self.settings.show_gpu):
                self.out.line(line)
        return report

    def _epoch_not_learning(self, val_acc: Optional[float], num_classes: Optional[int],
                            val_loss: Optional[float]) -> list[Event]:
        """The epoch-level not_learning rules: at chance two epochs running (or at the run's end), 3 epochs at
        chance (no planned steps), the budget's val rule. They and the in-run rules (weights static, loss flat
        at the LR's peak) see one problem: it is said once, until an epoch ends above chance (the run has
        started to learn; a new finding after that is news)."""
        d, step, epoch = self._loss_detectors, self.step_count, self.epoch
        if num_classes and num_classes >= 2:
            d.num_classes = int(num_classes)
        final = self.planned_steps is not None and step >= self.planned_steps
        found = [d.epoch_at_chance(step, epoch, val_acc, self._tally.losses, self._probe.last.get("weight_change"),
                                   final, val_loss)]
        if self.planned_steps is None:  # with the budget known, the budget rule replaces "3 epochs at chance"
            found.append(d.epoch_val(step, epoch, val_acc, num_classes))
        found.append(self._progress.epoch_val(step, epoch, val_acc))
        if d.chance_history and not d.chance_history[-1][0]:
            self._not_learning_said = False
        found = [e for e in found if e is not None]
        return found[:1] if found and not self._not_learning_said else []

    # ------------------------------------------------------------------ run level

    def summary(self) -> dict[str, Any]:
        """The run's health figures: event counts, memory peaks, where the time went, the monitor's cost."""
        gpu_peak = torch.cuda.max_memory_allocated(self.device) / MB if self.on_cuda else None
        return run_summary(self.events, self.step_count, self.epochs_done, len(self.nonfinite_steps),
                           max(self._memory.peak_rss_mb, self.sampler.peak_rss_mb), self._totals,
                           self._overhead_s, self._last_record.get("loss"), gpu_peak)

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 2,  # 2: step_count and the events' steps are optimizer steps (1: micro-batches)
            "step_count": self.step_count,
            "epoch": self.epoch,
            "epochs_done": self.epochs_done,
            "steps_per_epoch": self.steps_per_epoch,
            "events": [e.to_dict() for e in self.events],
            "nonfinite_steps": list(self.nonfinite_steps),
            "loss": self._loss_detectors.state_dict(),
            "leaks": self._memory.state_dict(),
            "progress": self._progress.state_dict(),
            "probe": self._probe.state_dict(),
            "totals": dict(self._totals),
            "overhead_s": self._overhead_s,
            "interval": self._interval.state_dict(),
            "open_epoch": self._tally.state() if self._epoch_open else None,
            "not_learning_said": self._not_learning_said,
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.step_count, self.epoch = d["step_count"], d["epoch"]
        self.epochs_done, self.steps_per_epoch = d.get("epochs_done", 0), d["steps_per_epoch"]
        self.events = [Event.from_dict(e) for e in d["events"]]
        self.nonfinite_steps = list(d["nonfinite_steps"])
        self._loss_detectors.load_state_dict(d["loss"])
        self._memory.load_state_dict(d["leaks"], self.step_count)
        if d.get("progress") is not None:
            self._progress.load_state_dict(d["progress"])
        if d.get("probe") is not None:
            self._probe.load_state_dict(d["probe"])
        self._probe_started = self.step_count > 0
        self._totals = Counter(d.get("totals", {}))
        self._overhead_s = d.get("overhead_s", 0.0)
        self._epoch_open = False
        self._interval.reset()
        if d.get("interval"):
            self._interval.load_state_dict(d["interval"])
        self._resumed_epoch = d.get("open_epoch")
        self._not_learning_said = bool(d.get("not_learning_said", False))

    def close(self) -> None:
        """The run's end. A loop that did not give planned_steps ends here: a last epoch at chance is said now,
        if nothing said it yet (a one-epoch run has no second epoch to confirm it)."""
        if self.enabled and self.planned_steps is None and not self._closed and not self._not_learning_said:
            e = self._loss_detectors.run_end(self.step_count, self.epoch)
            if e is not None:
                self._emit(e)
        self._closed = True
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
