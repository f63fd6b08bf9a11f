"""`trainlab eval CHECKPOINT` or `trainlab eval --model NAME --weights FILE`: loss, top-1 and top-5 on the val split
(seed 003's baseline check of the data pipeline with a pretrained model)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from trainlab import config as config_mod
from trainlab import distributed
from trainlab.errors import ConfigError, DataError
from trainlab.state import checkpoint as ckpt
from trainlab.state import remote
from trainlab.train.engine import evaluate


def evaluate_checkpoint(path: str, overrides: Sequence[str] = (), use_ema: bool = False,
                        weights: str = "auto") -> dict:
    """The checkpoint's own config (data, model) with `overrides` applied, e.g. data.root=/elsewhere.

    `weights`: "auto" (the default) scores the weights that won the checkpoint's epoch, so the score in a best
    file's name is what eval reproduces; "ema" or "raw" (`--ema`, `--raw`; use_ema=True is "ema") force one."""
    weights = "ema" if use_ema else weights
    if weights not in ("auto", "ema", "raw"):
        raise ConfigError(f"weights={weights!r}: choose auto, ema or raw")
    if remote.is_url(path):  # a checkpoint in an object store: read from a temporary local copy
        with tempfile.TemporaryDirectory(prefix="trainlab-eval-") as scratch:
            result = evaluate_checkpoint(str(remote.fetch_file(path, scratch)), overrides, weights=weights)
        return {**result, "checkpoint": path}
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"checkpoint not found: {file}; give the path of a .pt file in a run's checkpoints/")
    state = ckpt.load_checked(file, trusted=_trusted(overrides))
    if "config" not in state or "model" not in state:
        raise ConfigError(f"{file} is not a trainlab checkpoint (no 'config'/'model'); train with trainlab first, "
                          "or score a plain state_dict with --model NAME --weights FILE")  # fmt: skip
    cfg = with_overrides(config_mod.from_dict(state["config"]), overrides)
    if weights == "auto":
        which, why = winning_weights(file.name, state)
    else:
        which, why = weights, f"--{weights}"
    if which == "ema":
        if not state.get("ema"):
            raise ConfigError(f"{file} has no EMA weights (train.ema_decay was not set); drop --ema")
        chosen = _ema_weights(state["ema"])
    else:
        chosen = state["model"]
    result = _score(cfg, chosen, state.get("num_classes"), str(file))
    return {"checkpoint": str(file), "weights": which, "weights_chosen_by": why, "tta": cfg.eval.tta, **result}


def winning_weights(name: str, state: dict) -> tuple[str, str]:
    """Which weights `trainlab eval` scores by default, and why: the ones a best file's name says
    (epoch=NN-ema-val_acc1=...), else those that won the epoch this checkpoint ends (the run's best choice,
    train.ema.scored_weights: what an older best file, named without a tag, was chosen by), else raw."""
    from trainlab.state.retention import BEST_TAG_RE
    from trainlab.train.ema import scored_weights

    tag = BEST_TAG_RE.match(name)
    if tag:
        return tag.group(1), "named in the file"
    if not state.get("ema"):
        return "raw", "the checkpoint has no EMA weights"
    row = _epoch_end_row(state)
    if row is None:
        return "raw", "the checkpoint is not at an epoch's end: no score to choose by (--ema for the EMA's)"
    score, which = scored_weights(row)
    return which, f"they scored higher at epoch {row.get('epoch')}" if which == "ema" else (
        f"they scored at least as high as the EMA's at epoch {row.get('epoch')}")


def _epoch_end_row(state: dict) -> Optional[dict]:
    """The metrics row of the epoch whose end this state is (its weights are the ones that row scored), or
    None for a state taken mid-epoch (a stop, a periodic checkpoint)."""
    rows = state.get("metrics_rows")
    if not isinstance(rows, list) or not rows or not isinstance(rows[-1], dict):
        return None
    row, epoch, phase = rows[-1], state.get("epoch"), state.get("phase")
    if not isinstance(epoch, int):
        return None
    if (phase == "done" and row.get("epoch") == epoch) or (
            phase == "train" and state.get("step_in_epoch") == 0 and row.get("epoch") == epoch - 1):
        return row
    return None


def evaluate_weights(model_name: str, weights_path: str, overrides: Sequence[str] = ()) -> dict:
    """`trainlab eval --model NAME --weights FILE`: a model by registry name or import path with a plain
    state_dict (loaded weights-only, or .safetensors), scored on the val split the overrides describe: the
    data pipeline checked with a known model before a run (seed 003's pretrained ResNet-18 baseline)."""
    from trainlab.models.pretrained import _read_checkpoint, _strip_wrappers

    file = Path(weights_path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--weights {weights_path}: no such file; give a state_dict saved with torch.save")
    cfg = config_mod.load_config(None, [f"model.name={model_name}", *overrides])
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = _read_checkpoint(file, bool(cfg.run.trust_checkpoint))
    result = _score(cfg, _strip_wrappers(state), None, str(file))
    return {"checkpoint": str(file), "model": model_name, "weights": "state_dict", "tta": cfg.eval.tta, **result}


def _score(cfg: Any, weights: dict, num_classes: Optional[int], source: str) -> dict:
    from trainlab import models
    from trainlab.data import build_data

    ctx = distributed.setup(cfg.train.device, cfg.dist.backend, cfg.dist.timeout_s)
    try:
        data = build_data(cfg, ctx.device)
        num_classes = num_classes or cfg.model.num_classes or _head_size(weights) or data.num_classes
        if data.num_classes > num_classes:
            raise DataError(f"the val split has {data.num_classes} classes but the model has {num_classes} outputs")
        model = models.from_config(cfg, int(num_classes), with_weights=False)  # the weights come next
        missing, unexpected = _fit(model, weights)
        if missing or unexpected:
            raise ConfigError(
                f"{source}: the weights do not fit model.name={cfg.model.name} ({len(missing)} keys missing, e.g. "
                f"{', '.join(missing[:2]) or '-'}; {len(unexpected)} unexpected, e.g. {', '.join(unexpected[:2]) or '-'})"
                "; check the model name and model.num_classes"
            )
        model.to(ctx.device)
        precision = "bf16" if ctx.device.type == "cuda" and torch.cuda.is_bf16_supported() else "32"
        return evaluate(model, data.val, ctx.device, precision, tta=cfg.eval.tta)
    finally:
        distributed.cleanup(ctx)


def _fit(model: torch.nn.Module, weights: dict) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if not (missing or unexpected or wrong):
        model.load_state_dict(weights)
    return missing + [f"{k} (shape)" for k in wrong], unexpected


def _head_size(weights: dict) -> Optional[int]:
    """The output size of a plain state_dict's classifier (its last 2-d weight), when the config does not say."""
    heads = [v for k, v in weights.items() if k.endswith("weight") and getattr(v, "dim", lambda: 0)() == 2]
    return int(heads[-1].shape[0]) if heads else None


def with_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """A saved config with `key=value` overrides on top (validated: a bad key or value is one line)."""
    from omegaconf import OmegaConf

    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override '{item}' is not section.key=value")
    if not overrides:
        return cfg
    try:
        extra = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except Exception as err:  # the override's own syntax
        raise ConfigError(f"command line: {str(err).splitlines()[0]}") from None
    values = config_mod.to_dict(cfg)
    for section, keys in extra.items():
        if not isinstance(keys, dict) or section not in values:
            raise ConfigError(f"override '{section}' is not section.key=value with a known section")
        values[section].update(keys)
    return config_mod.from_dict(values)


def _trusted(overrides: Sequence[str]) -> bool:
    """run.trust_checkpoint among the overrides: needed before the checkpoint (and its config) is read."""
    values = [item.split("=", 1)[1] for item in overrides if item.split("=", 1)[0].strip() == "run.trust_checkpoint"]
    if not values:
        return False
    return bool(config_mod.load_config(None, [f"run.trust_checkpoint={values[-1]}"]).run.trust_checkpoint)


def _ema_weights(ema_state: dict) -> dict:
    return ema_state.get("module", ema_state.get("state_dict", ema_state))
