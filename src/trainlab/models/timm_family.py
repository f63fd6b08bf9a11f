"""timm's models as `model.name=timm/<name>` (extra `trainlab[timm]`): timm builds them, with trainlab's
class count and timm's own dropout / stochastic-depth knobs; starting weights come from a local file only
(nothing is downloaded at run time)."""

from __future__ import annotations

import difflib
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from trainlab.errors import ConfigError, first_line

PREFIX = "timm/"


def is_timm_name(name: str) -> bool:
    return name.strip().lower().startswith(PREFIX)


def installed() -> bool:
    return importlib.util.find_spec("timm") is not None


@cache
def timm_names() -> tuple[str, ...]:
    """Every architecture timm can build (without pretrained tags), or none when timm is absent."""
    if not installed():
        return ()
    import timm

    return tuple(timm.list_models())


def _check(name: str) -> str:
    arch = name.strip()[len(PREFIX) :]
    if not installed():
        raise ConfigError(f"model.name={name}: timm is not installed; pip install 'trainlab[timm]'")
    if arch not in timm_names():
        close = difflib.get_close_matches(arch, timm_names(), n=5, cutoff=0.5)
        hint = (f"; closest: {', '.join(PREFIX + c for c in close)}" if close
                else "; `trainlab inspect --list` shows them all")  # fmt: skip
        raise ConfigError(f"model.name={name!r} is not a known timm model{hint}")
    return arch


def build(name: str, num_classes: int, drop_rate: Optional[float] = None,
          drop_path_rate: Optional[float] = None) -> nn.Module:  # fmt: skip
    """A timm model with random initialisation. None for a rate keeps the architecture's default."""
    arch = _check(name)
    import timm

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if drop_rate is not None:
        kwargs["drop_rate"] = float(drop_rate)
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except TypeError as exc:  # an architecture without stochastic depth, for one
        raise ConfigError(f"model.name={name}: timm cannot build it with {kwargs} ({exc})") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a local file: .safetensors, or a torch file loaded with weights_only=True (a file
    never runs code). A trainlab checkpoint's 'model' entry is taken when the file holds one."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc)[:200]
        raise ConfigError(
            f"model.pretrained={path}: cannot read it as weights ({first}); give a state_dict saved with "
            "torch.save(model.state_dict(), ...) or a .safetensors file"
        ) from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not (isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values())):
        raise ConfigError(f"model.pretrained={path}: no weights found; expected a state_dict of tensors")
    return obj


def load_local_pretrained(model: nn.Module, name: str, source: str) -> dict[str, Any]:
    from trainlab.models.pretrained import _strip_wrappers, load_matching

    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained={source!r}: no such file; for {name} give a local weights file "
            "(timm's hub weights are not downloaded at run time)"
        )
    return load_matching(model, _strip_wrappers(read_weights(path)), source)
