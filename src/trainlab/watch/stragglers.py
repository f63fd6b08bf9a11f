"""straggler (DDP): every rank's mean step time, gathered once per logging interval, against the median's."""

from __future__ import annotations

import numpy as np
import torch

from trainlab.watch.advice import CODE, Advice
from trainlab.watch.events import Episode, Event

WARNING = 1


def straggler_events(step_times: list[float], step: int, epoch: int, ratio: float,
                     episodes: dict[int, Episode], advice: Advice = CODE) -> list[Event]:
    """straggler: ranks whose mean step time is `ratio` times the median rank's or more."""
    med = float(np.median(step_times))
    events = []
    for rank, t in enumerate(step_times):
        slow = med > 0 and t > ratio * med
        if episodes.setdefault(rank, Episode()).update(WARNING if slow else 0):
            events.append(Event(
                "straggler", "warning", step, epoch,
                f"rank {rank} is {t / med:.2f}x slower than the median rank ({t * 1000:.1f} ms vs {med * 1000:.1f} "
                f"ms per step); every rank waits for it at each all-reduce. Check that host's load, "
                f"{advice('rank_loader')} and its GPU clocks/thermals.",
                {"rank": rank, "step_time_s": t, "median_step_time_s": med, "all_ranks_s": step_times},
            ))
    return events


class StragglerCheck:
    def __init__(self, ratio: float, device: torch.device, advice: Advice = CODE) -> None:
        self.ratio, self.device, self.advice = ratio, device, advice
        self.episodes: dict[int, Episode] = {}

    def events(self, step_time: float, step: int, epoch: int) -> list[Event]:
        """A collective: every rank calls it at the same logging step."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return []
        on = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        mine = torch.tensor([step_time], dtype=torch.float64, device=on)
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)  # one collective per logging interval
        times = [float(t.item()) for t in gathered]
        return straggler_events(times, step, epoch, self.ratio, self.episodes, self.advice)
