"""A user's own model: an nn.Module handed to `trainlab.fit`, or a callable (`model.name: pkg.mod:factory`)
returning one, called with `model.kwargs` (and `num_classes=` when it takes it).

The model.* keys that mean something for any module apply here too: `model.pretrained` (a local state_dict,
weights-only), `model.freeze_backbone` (all but the last Linear / `fc` / `classifier` / `head`) and
`model.norm=none`. The ones that rebuild a registry architecture (`cifar_stem`, `drop_rate`,
`drop_path_rate`, `aux_logits`) are refused in one line: the user's code owns its architecture.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainlab.errors import ConfigError
from trainlab.user import accepts, call_user


def build_user_model(source: Any, cfg: Any, num_classes: int, with_weights: bool = True) -> nn.Module:
    m = cfg.model
    for key in ("cifar_stem", "aux_logits"):
        if m[key]:
            raise ConfigError(f"model.{key}=true rebuilds a registry model; your model ({m.name}) owns its "
                              f"architecture: leave model.{key} false")  # fmt: skip
    for key in ("drop_rate", "drop_path_rate"):
        if m[key] is not None:
            raise ConfigError(f"model.{key} applies to registry and timm/ models; set the rate in your own model "
                              f"({m.name}) and leave model.{key} null")  # fmt: skip
    if isinstance(source, nn.Module):
        if m.kwargs:
            raise ConfigError(f"model.kwargs={dict(m.kwargs)} need a factory; the model was handed over built "
                              "(pass a callable, e.g. model=lambda num_classes: Net(num_classes, **kwargs))")  # fmt: skip
        model = source
    else:
        kwargs = dict(m.kwargs or {})
        if accepts(source, "num_classes") and "num_classes" not in kwargs:
            kwargs["num_classes"] = num_classes
        model = call_user(source, "model.name", **kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.name={m.name} returned {type(model).__name__}, expected an nn.Module")
    if m.norm == "none":
        from trainlab.models import _remove_batchnorm

        _remove_batchnorm(model)
    if m.pretrained and with_weights:
        from trainlab.models.pretrained import _read_checkpoint, _strip_wrappers, load_matching

        state = _read_checkpoint(_path(m.pretrained), bool(cfg.run.trust_checkpoint))
        model.pretrained_report = load_matching(model, _strip_wrappers(state), str(m.pretrained))
    if m.freeze_backbone:
        from trainlab.models.pretrained import freeze_all_but_head

        freeze_all_but_head(model)
    return model


def _path(value: str):
    from pathlib import Path

    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.pretrained={value}: no such file; your own model loads a local state_dict only")
    return path
