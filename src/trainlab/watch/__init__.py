"""The watch: a training monitor usable in any loop (`from trainlab import Watcher`).

Imports are lazy so that `trainlab.config` (which needs only `watch.settings`) does not load torch.
"""

from typing import Any

__all__ = ["Event", "WatchSettings", "Watcher"]


def __getattr__(name: str) -> Any:
    if name == "Watcher":
        from trainlab.watch.watcher import Watcher

        return Watcher
    if name == "Event":
        from trainlab.watch.events import Event

        return Event
    if name == "WatchSettings":
        from trainlab.watch.settings import WatchSettings

        return WatchSettings
    raise AttributeError(f"module 'trainlab.watch' has no attribute {name!r}")
