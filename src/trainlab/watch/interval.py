"""The logging interval: the per-step losses (and a gradient norm) since the last reduction, kept on the
device in one small buffer and read with a single `.tolist()` when the interval closes, plus its clocks."""

from __future__ import annotations

from typing import Any, Optional

import torch

NO_LOSS, ON_DEVICE, ON_HOST = 0, 1, 2  # where each step's loss is
DEVICE_SLOTS = 1024  # losses kept on the device between reads: one sync per 1024 steps of a long interval


class Interval:
    def __init__(self, size: int) -> None:
        # one slot per step of the interval, at most DEVICE_SLOTS (print_every=10**7 made ten million views, 6 GB,
        # and 10**12 asked for a 4 TB buffer), plus one for the grad norm
        self.size = max(1, min(int(size), DEVICE_SLOTS))
        self._buf: Optional[torch.Tensor] = None
        self._slots: list[torch.Tensor] = []
        self.reset()

    def reset(self) -> None:
        self.sources: list[int] = []  # per step: NO_LOSS, ON_DEVICE (in the buffer) or ON_HOST (host_losses)
        self.host_losses: dict[int, float] = {}
        self.wall_s = 0.0
        self.wait_s = 0.0
        self.sync_s = 0.0  # time waiting for other ranks (the straggler check subtracts it)
        self.images = 0
        self.grad_norm: Any = None  # None, a float, or "buffer" (in the device buffer's last slot)

    def __len__(self) -> int:
        return len(self.sources)

    def add_loss(self, loss: Any) -> None:
        index = len(self.sources)
        if loss is None:
            self.sources.append(NO_LOSS)
        elif isinstance(loss, torch.Tensor):
            value = loss.detach()
            if value.dim():
                value = value.reshape(()) if value.numel() == 1 else value.float().mean()
            if self._buf is None or self._buf.device != value.device:
                self.flush()
                self._buf = torch.zeros(self.size + 1, dtype=torch.float32, device=value.device)
                self._slots = list(self._buf.unbind(0))  # views made once: no indexing cost per step
            slot = index % self.size
            if slot == 0 and index:  # a long interval filled the buffer: read it (one sync) before reusing it
                self.flush()
            self._slots[slot].copy_(value)  # an async device copy, no sync
            self.sources.append(ON_DEVICE)
        else:
            self.host_losses[index] = float(loss)
            self.sources.append(ON_HOST)

    def add_grad_norm(self, grad_norm: Any) -> None:
        if isinstance(grad_norm, torch.Tensor) and self._buf is not None and self._buf.device == grad_norm.device:
            self._slots[-1].copy_(grad_norm.detach().float().reshape(()))  # read with the losses: no extra sync
            self.grad_norm = "buffer"
        else:
            self.grad_norm = float(grad_norm)

    def _in_buffer(self) -> bool:
        return self._buf is not None and (ON_DEVICE in self.sources or self.grad_norm == "buffer")

    def flush(self) -> None:
        """Read the device buffer into host values (before it is replaced, or to save the interval)."""
        if self._in_buffer():
            values = self._buf.tolist()
            for i, src in enumerate(self.sources):
                if src == ON_DEVICE:
                    self.host_losses[i] = values[i % self.size]
                    self.sources[i] = ON_HOST
            if self.grad_norm == "buffer":
                self.grad_norm = values[-1]

    def read(self, last_step: int) -> tuple[list[tuple[int, float]], Optional[float]]:
        """([(step, loss)] of the steps that gave one, the gradient norm given to step()): the one sync."""
        values = self._buf.tolist() if self._in_buffer() else []
        first_step = last_step - len(self.sources) + 1
        steps_losses = [(first_step + i, values[i % self.size] if src == ON_DEVICE else self.host_losses[i])
                        for i, src in enumerate(self.sources) if src != NO_LOSS]
        grad_norm = values[-1] if self.grad_norm == "buffer" else self.grad_norm
        return steps_losses, grad_norm

    def state_dict(self) -> dict[str, Any]:
        """So a resumed run logs the same averages at the same steps. Reads the device buffer: one sync, at
        checkpoint time only."""
        self.flush()
        return {"sources": list(self.sources), "losses": {str(k): v for k, v in self.host_losses.items()},
                "images": self.images, "grad_norm": self.grad_norm}  # fmt: skip

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.sources = list(d["sources"])
        self.host_losses = {int(k): v for k, v in d["losses"].items()}
        self.images = d["images"]
        self.grad_norm = d["grad_norm"]
