"""trainlab: train image classifiers in PyTorch and see what the run is doing."""

from typing import Any

__all__ = ["Watcher"]


def __getattr__(name: str) -> Any:  # lazy: `import trainlab` stays cheap (no torch) for the CLI
    if name == "Watcher":
        from trainlab.watch.watcher import Watcher

        return Watcher
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")
