"""trainlab: train image classifiers in PyTorch and see what the run is doing.

    import trainlab
    result = trainlab.fit("configs/mine.yaml", "train.epochs=30", model=net, train_data=ds, val_data=val_ds)
    trainlab.doctor(..., model=net, train_data=ds, val_data=val_ds)   # the same arguments: the doctor's verdicts
    from trainlab import Watcher                                      # the monitor alone, in your own loop
"""

from typing import Any

__all__ = ["Callback", "FitResult", "Watcher", "doctor", "fit"]

# lazy: `import trainlab` stays cheap (no torch) for the CLI
_EXPORTS = {
    "Watcher": "trainlab.watch.watcher",
    "fit": "trainlab.commands.fit",
    "FitResult": "trainlab.commands.fit",
    "Callback": "trainlab.train.callbacks",
}


def __getattr__(name: str) -> Any:
    if name == "doctor":  # the doctor package is callable: trainlab.doctor(...) (see doctor/__init__.py)
        import importlib

        return importlib.import_module("trainlab.doctor")
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")
