"""How a fix is named to the person reading the warning.

Inside `trainlab train` the run's knobs are config keys (`optim.lr`, `data.num_workers`), and the run says so
by passing `advice="trainlab"` to its Watcher. In someone's own loop (the default) the same fix is a line of
their code: the optimizer's `lr=`, `DataLoader(num_workers=...)`, `torch.nn.utils.clip_grad_norm_`. Every
detector takes its fix texts from here, so neither kind of user reads the other's vocabulary.
"""

from __future__ import annotations

from typing import Any

# key -> (in a user's own loop, inside `trainlab train`)
TEXTS: dict[str, tuple[str, str]] = {
    "lower_lr": ("lower the LR (the optimizer's lr=, or the schedule's peak)", "lower optim.lr"),
    "lower_lr_much": ("lower the LR (the optimizer's lr=; try /3 to /10)", "lower optim.lr (try /3 to /10)"),
    "raise_lr": ("raise the LR (the optimizer's lr=)",
                 "raise optim.lr (`trainlab doctor` places it on an LR range test)"),
    "warmup": ("add a warm-up (e.g. LambdaLR ramping the LR over the first few hundred steps)",
               "add warm-up (sched.warmup_epochs)"),
    "clip": ("clip the gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) before "
             "optimizer.step())", "set train.clip_grad=1.0"),
    "precision": ("compute the loss in float32 (fp16 autocast overflows; bf16 does not)",
                  "use train.precision=bf16/32 instead of fp16"),
    "stop_at_nan": ("stop or skip the step when the loss is not finite (torch.isfinite(loss)) so the weights are "
                    "not overwritten", "watch.on_nonfinite=stop checkpoints and stops at the first one"),
    "labels": ("check that the labels match the inputs (a shuffled or misaligned label list, a wrong class "
               "mapping)", "check that labels match inputs (a shuffled or misaligned label column)"),
    "head": ("check that the model's output size is the number of classes",
             "check that model.num_classes is the class count"),
    "normalise": ("check the input normalisation (mean/std of the tensors you feed)",
                  "check the data normalisation (data.mean/data.std)"),
    "range_test": ("try a short LR sweep on a few batches to find where the loss starts to fall",
                   "`trainlab doctor` runs an LR range test"),
    "frozen": ("check that the optimizer holds the parameters that should train (none frozen by mistake)",
               "no frozen random weights (model.freeze_backbone without model.pretrained)"),
    "weight_decay": ("lower the optimizer's weight_decay= (usual: 5e-4 for SGD, 0.05 for AdamW)",
                     "lower optim.weight_decay (usual: 5e-4 for SGD, 0.05 for AdamW)"),
    "workers": ("give the DataLoader worker processes (DataLoader(..., num_workers={suggested}), now {now})",
                "more loader workers (data.num_workers={suggested}, now {now})"),
    "workers_full": ("more DataLoader workers cannot help: it has {now} for the {cpus} this process may use",
                     "more loader workers cannot help: data.num_workers={now} for the {cpus} this process may use"),
    "workers_unknown": ("give the DataLoader worker processes (DataLoader(..., num_workers=4))",
                        "more loader workers (data.num_workers)"),
    "pin_memory": ("DataLoader(..., pin_memory=True)", "data.pin_memory=true"),
    "in_memory": ("do the per-sample work once: decode/transform ahead of time and index ready tensors (or "
                  "batch transforms on the device)", "the in-memory loader (data.loader=tensor) when the data fits "
                  "in memory"),
    "rank_loader": ("its data loading (the DataLoader's num_workers=)", "its data loading (data.num_workers)"),
    "input_stats": ("compute the mean/std of your training tensors and normalise with those",
                    "let trainlab measure them (drop data.mean/data.std, or `trainlab data stats ROOT`)"),
    "input_hint_raw": ("that is the scale of raw 0..255 pixels: divide by 255 (ToTensor does) before normalising",
                       "that is the scale of raw 0..255 pixels: data.mean/data.std are probably given for 0..1 "
                       "images (or not at all)"),
    "input_hint": ("the normalisation does not fit these inputs", "data.mean/data.std do not fit these images"),
}


class Advice:
    """Fix texts for one kind of user: `Advice("code")` (someone's own loop) or `Advice("trainlab")`."""

    def __init__(self, kind: str = "code") -> None:
        if kind not in ("code", "trainlab"):
            raise ValueError(f"advice={kind!r}: use 'code' (your own loop) or 'trainlab'")
        self.kind = kind
        self._index = 0 if kind == "code" else 1

    @property
    def in_trainlab(self) -> bool:
        return self._index == 1

    def __call__(self, key: str, **values: Any) -> str:
        text = TEXTS[key][self._index]
        return text.format(**values) if values else text

    def join(self, *keys: str) -> str:
        """Several fixes as one clause: "a, b, or c"."""
        parts = [self(k) for k in keys]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", or " + parts[-1]


CODE = Advice("code")
