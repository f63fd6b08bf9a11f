"""Model registry: name -> nn.Module, with the CIFAR stem, the norm switch and starting weights.

Every torchvision classification model is available by its torchvision name (random init), plus the
CIFAR ResNets of He et al. 2016 (resnet8/14/20/32/44/56/110, see cifar_resnet.py). Every one trains (see
tests/test_model_registry.py): GoogLeNet and Inception-v3 without their auxiliary heads unless
model.aux_logits=true (outputs.py), ViTs and MaxViT built for data.img_size, and a size a model cannot take
refused by name (input_size.py). When timm is installed, every timm model as `timm/<name>` (timm_family.py).
"""

from __future__ import annotations

import difflib
import logging
import warnings
from functools import cache
from typing import Any

from torch import nn

from trainlab.errors import ConfigError
from trainlab.models import timm_family
from trainlab.models.cifar_resnet import CIFAR_RESNET_BLOCKS, cifar_resnet
from trainlab.models.input_size import guard_first_input, min_img_size, size_step
from trainlab.models.outputs import AUX_MODELS
from trainlab.models.pretrained import freeze_all_but_head, head_prefixes, load_pretrained

__all__ = ["available", "create", "inspect_model", "head_prefixes", "is_cifar_model", "min_img_size",
           "size_step"]

log = logging.getLogger("trainlab.models")



def _torchvision() -> Any:
    """torchvision, imported when a torchvision model or weights name is asked for: its import costs ~1.7 s of
    CPU (it loads torch._dynamo), which a run of trainlab's own CIFAR ResNets on in-memory data never needs."""
    import torchvision

    return torchvision

@cache
def _torchvision_names() -> tuple[str, ...]:
    tv = _torchvision()
    return tuple(tv.models.list_models(module=tv.models))


def available() -> list[str]:
    return sorted(set(_torchvision_names()) | set(CIFAR_RESNET_BLOCKS))


def is_cifar_model(name: str, cifar_stem: bool = False) -> bool:
    """True when the model is built for 32 px inputs (a CIFAR ResNet, or any model with the CIFAR stem)."""
    return cifar_stem or name.lower() in CIFAR_RESNET_BLOCKS


def _unknown(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, available(), n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else "; `trainlab inspect --list` shows them all"
    return ConfigError(f"model.name={name!r} is not a known model{hint}")


def _apply_cifar_stem(model: nn.Module, name: str) -> None:
    """3x3 stride-1 first conv and no max-pool: keeps 32x32 inputs at full resolution in the first stage."""
    if hasattr(model, "conv1") and hasattr(model, "maxpool"):  # resnet, resnext, wide_resnet
        out_channels = model.conv1.out_channels
        model.conv1 = nn.Conv2d(3, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    elif name.startswith("densenet"):
        features = model.features
        out_channels = features.conv0.out_channels
        features.conv0 = nn.Conv2d(3, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(features.conv0.weight)
        features.pool0 = nn.Identity()
    else:
        raise ConfigError(
            f"model.cifar_stem=true is supported for resnet*, resnext*, wide_resnet* and densenet*, not {name}; "
            "set model.cifar_stem=false"
        )


def _remove_batchnorm(module: nn.Module) -> int:
    """Replace every BatchNorm layer with Identity (other norms, e.g. LayerNorm, stay). Returns the count."""
    count = 0
    for child_name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, child_name, nn.Identity())
            count += 1
        else:
            count += _remove_batchnorm(child)
    return count


def _build(name: str, num_classes: int, img_size: int | None = None, aux_logits: bool = False,
           drop_rate: float = 0.0) -> nn.Module:
    if name in CIFAR_RESNET_BLOCKS:
        return cifar_resnet(name, num_classes, drop_rate)
    if drop_rate:
        raise ConfigError(
            f"model.drop_rate={drop_rate} applies to the CIFAR ResNets (resnet8 ... resnet110) and timm/ models; "
            f"{name} has its own dropout settings: leave model.drop_rate null"
        )
    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if name in AUX_MODELS:
        kwargs["init_weights"] = True  # silences torchvision's warning about its future default
        kwargs["aux_logits"] = aux_logits
    if img_size is not None and name.startswith("vit_"):
        patch = size_step(name)
        if img_size % patch:
            raise ConfigError(f"model.name={name} needs data.img_size divisible by its patch size {patch}, "
                              f"not {img_size}")
        kwargs["image_size"] = img_size
    if img_size is not None and name.startswith("maxvit"):
        if img_size % 224:
            raise ConfigError(f"model.name={name} needs data.img_size a multiple of 224 (its 7x7 windows at "
                              f"every stage), not {img_size}")
        kwargs["input_size"] = (img_size, img_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _torchvision().models.get_model(name, **kwargs)


def create(
    name: str,
    num_classes: int,
    cifar_stem: bool = False,
    norm: str = "batch",
    pretrained: str | None = None,
    freeze_backbone: bool = False,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    trust_pretrained: bool = False,
    img_size: int | None = None,
    aux_logits: bool = False,
) -> nn.Module:
    """Build a model by name. `cifar_stem` is ignored for the CIFAR ResNets (they already are).

    norm="none" replaces BatchNorm with Identity; convolutions keep bias=False, as built.
    The pretrained report (what was loaded, which keys got a new init) is kept on `model.pretrained_report`.
    drop_rate / drop_path_rate go to timm models (None: the architecture's default).
    A pretrained file loads weights-only unless `trust_pretrained` (run.trust_checkpoint) allows a full unpickle.
    `img_size` (data.img_size) sizes ViTs and MaxViT; the first input is checked against what the model can
    take either way. `aux_logits` keeps GoogLeNet's / Inception-v3's auxiliary heads (trained with their
    papers' loss weights, see outputs.py).
    """
    timm_model = timm_family.is_timm_name(name)
    key = name.strip() if timm_model else name.strip().lower()
    if not timm_model and key not in CIFAR_RESNET_BLOCKS and key not in available():
        raise _unknown(name)
    if num_classes < 1:
        raise ConfigError(f"model.num_classes={num_classes} must be positive")
    if norm not in ("batch", "none"):
        raise ConfigError(f"model.norm={norm!r} is not valid; choose batch or none")
    if aux_logits and key not in AUX_MODELS:
        log.info("model.aux_logits=true: %s has no auxiliary heads; ignored", key)
    if timm_model:
        model = timm_family.build(key, num_classes, drop_rate, drop_path_rate)
    else:
        if drop_path_rate is not None:
            raise ConfigError(f"model.drop_path_rate applies to timm/ models, not {name}; leave it null")
        model = _build(key, num_classes, img_size, aux_logits and key in AUX_MODELS, drop_rate or 0.0)
    if cifar_stem and key not in CIFAR_RESNET_BLOCKS:
        _apply_cifar_stem(model, key)
    if norm == "none" and _remove_batchnorm(model) == 0:
        log.warning("model.norm=none: %s has no BatchNorm layers; nothing removed", key)
    if pretrained:
        if timm_model:
            report = timm_family.load_local_pretrained(model, key, pretrained)
        else:
            report = load_pretrained(model, key, pretrained, trusted=trust_pretrained)
        model.pretrained_report = report
        log.info(
            "pretrained %s: %d tensors loaded, new head: %s", pretrained, report["loaded"], report["new_head"]
        )
    if freeze_backbone:
        freeze_all_but_head(model)
    built_for = img_size if key.startswith(("vit_", "maxvit")) and img_size is not None else None
    if built_for is None and key.startswith(("vit_", "maxvit")):
        built_for = 224  # torchvision's default size for them
    guard_first_input(model, key, built_for, cifar_stem, aux_logits and key in AUX_MODELS)
    return model


def from_config(cfg: Any, num_classes: int, with_weights: bool = True, user: Any = None) -> nn.Module:
    """The model a config describes (every model.* key, data.img_size's final size, run.trust_checkpoint).
    `with_weights=False` skips model.pretrained: for a model whose weights come from elsewhere next.
    `user` (trainlab.user.UserParts) carries a user's own model: an nn.Module or a factory."""
    from trainlab.config import final_img_size
    from trainlab.user import is_import_path, is_object_name, load_object

    m = cfg.model
    source = getattr(user, "model", None)
    if source is None and is_import_path(m.name):
        source = load_object(m.name, "model.name", cfg.run.config_dir)
    if source is not None:
        from trainlab.models.user_model import build_user_model

        return build_user_model(source, cfg, num_classes, with_weights)
    if is_object_name(m.name):
        raise ConfigError(f"model.name={m.name} was a Python object handed to trainlab.fit; to build it from a "
                          "config give its factory as an import path, model.name=pkg.module:make_model")  # fmt: skip
    return create(
        m.name, num_classes, cifar_stem=m.cifar_stem, norm=m.norm,
        pretrained=m.pretrained if with_weights else None, freeze_backbone=m.freeze_backbone,
        drop_rate=m.drop_rate, drop_path_rate=m.drop_path_rate, trust_pretrained=bool(cfg.run.trust_checkpoint),
        img_size=final_img_size(cfg.data.img_size), aux_logits=m.aux_logits,
    )  # fmt: skip


from trainlab.models.inspection import inspect_model  # noqa: E402  (needs create())
