"""`trainlab eval CHECKPOINT`: loss, top-1 and top-5 on the val split (seed 003's baseline check)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from trainlab import config as config_mod
from trainlab import distributed
from trainlab.errors import ConfigError, DataError
from trainlab.state import checkpoint as ckpt
from trainlab.train.engine import evaluate


def evaluate_checkpoint(path: str, overrides: Sequence[str] = (), use_ema: bool = False) -> dict:
    """The checkpoint's own config (data, model) with `overrides` applied, e.g. data.root=/elsewhere."""
    from trainlab import models
    from trainlab.data import build_data

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"checkpoint not found: {file}; give the path of a .pt file in a run's checkpoints/")
    state = ckpt.load_checked(file, trusted=_trusted(overrides))
    if "config" not in state or "model" not in state:
        raise ConfigError(f"{file} is not a trainlab checkpoint (no 'config'/'model'); train with trainlab first")
    cfg = config_mod.from_dict(state["config"])
    values = config_mod.to_dict(cfg)
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override '{item}' is not section.key=value")
    cfg = config_mod.load_config(None, [*_dotlist(values), *overrides])
    ctx = distributed.setup(cfg.train.device, cfg.dist.backend, cfg.dist.timeout_s)
    data = build_data(cfg, ctx.device)
    num_classes = state.get("num_classes") or cfg.model.num_classes or data.num_classes
    if data.num_classes > num_classes:
        raise DataError(f"the val split has {data.num_classes} classes but the model was trained for {num_classes}")
    model = models.from_config(cfg, num_classes, with_weights=False)  # the checkpoint's weights come next
    weights = "raw"
    if use_ema:
        if not state.get("ema"):
            raise ConfigError(f"{file} has no EMA weights (train.ema_decay was not set); drop --ema")
        model.load_state_dict(_ema_weights(state["ema"]))
        weights = "ema"
    else:
        model.load_state_dict(state["model"])
    model.to(ctx.device)
    precision = "bf16" if ctx.device.type == "cuda" and torch.cuda.is_bf16_supported() else "32"
    result = evaluate(model, data.val, ctx.device, precision, tta=cfg.eval.tta)
    distributed.cleanup(ctx)
    return {"checkpoint": str(file), "weights": weights, "tta": cfg.eval.tta, **result}


def _trusted(overrides: Sequence[str]) -> bool:
    """run.trust_checkpoint among the overrides: needed before the checkpoint (and its config) is read."""
    values = [item.split("=", 1)[1] for item in overrides if item.split("=", 1)[0].strip() == "run.trust_checkpoint"]
    if not values:
        return False
    return bool(config_mod.load_config(None, [f"run.trust_checkpoint={values[-1]}"]).run.trust_checkpoint)


def _ema_weights(ema_state: dict) -> dict:
    return ema_state.get("module", ema_state.get("state_dict", ema_state))


def _dotlist(values: dict, prefix: str = "") -> list[str]:
    """Flatten a saved config back into key=value items (lists and nulls in OmegaConf syntax)."""
    items = []
    for section, keys in values.items():
        for key, value in keys.items():
            if value is None:
                text = "null"
            elif isinstance(value, list):
                text = "[" + ",".join(str(v) for v in value) + "]"
            else:
                text = str(value)
            items.append(f"{prefix}{section}.{key}={text}")
    return items
