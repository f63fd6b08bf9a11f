"""Starting weights for fine-tuning: a local checkpoint or a torchvision weights name.

Keys are matched by name and shape. A key whose shape differs (the classifier when num_classes
changes, the stem when cifar_stem is on) is dropped and reported, so the module keeps its fresh
initialisation there. A backbone key that the source lacks altogether is an error: that is a
different architecture, not a new head.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from trainlab.errors import ConfigError

log = logging.getLogger("trainlab.models")

HEAD_NAMES = ("fc", "classifier", "head", "heads")
# wrappers that prefix every key: DistributedDataParallel, torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")



def _torchvision() -> Any:
    """torchvision, imported when a torchvision model or weights name is asked for: its import costs ~1.7 s of
    CPU (it loads torch._dynamo), which a run of trainlab's own CIFAR ResNets on in-memory data never needs."""
    import torchvision

    return torchvision

def head_prefixes(model: nn.Module) -> list[str]:
    """Names of the top-level children that form the classifier head."""
    children = dict(model.named_children())
    named = [n for n in HEAD_NAMES if n in children]
    if named:
        return named
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return [last_linear[-1].split(".")[0]] if last_linear else []


def _in_head(key: str, prefixes: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _strip_wrappers(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _read_checkpoint(path: Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    from trainlab.state.checkpoint import UnsafeCheckpointError, safe_torch_load

    try:
        obj = safe_torch_load(path, "cpu", trusted, flag="run.trust_checkpoint=true")
    except UnsafeCheckpointError as exc:
        raise ConfigError(f"model.pretrained={exc}") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.pretrained={path}: cannot read it as a torch checkpoint ({first})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not (isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values())):
        raise ConfigError(
            f"model.pretrained={path}: no weights found; expected a trainlab checkpoint "
            "(a dict with key 'model') or a plain state_dict"
        )
    return obj


def _weight_names(model_name: str) -> list[str]:
    try:
        enum = _torchvision().models.get_model_weights(model_name)
    except (KeyError, ValueError):
        return []
    return ["DEFAULT"] + [f"{enum.__name__}.{member}" for member in enum.__members__]


def _resolve_weights(model_name: str, name: str) -> Any | None:
    """A torchvision WeightsEnum member for `name`, or None when it does not look like one."""
    if "." not in name and not (name.isupper() or name == "DEFAULT"):
        return None
    try:
        if "." in name:
            return _torchvision().models.get_weight(name)
        return _torchvision().models.get_model_weights(model_name)[name]
    except (KeyError, ValueError, AttributeError):
        valid = _weight_names(model_name)
        hint = (
            f"; valid for {model_name}: {', '.join(valid)}"
            if valid
            else f"; {model_name} has no torchvision weights"
        )
        raise ConfigError(
            f"model.pretrained={name!r}: no such file and no such torchvision weights{hint}"
        ) from None


def _network_reaches(url: str, timeout_s: float = 3.0) -> bool:
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_cache_path(weights: Any) -> Path:
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _download_or_cached(weights: Any, source: str) -> dict[str, torch.Tensor]:
    cached = hub_cache_path(weights)
    if not cached.is_file() and not _network_reaches(weights.url):
        raise ConfigError(
            f"model.pretrained={source}: the weights are not in the torch hub cache ({cached}) and "
            f"there is no network to download {weights.url}; copy that file to {cached}, "
            "or give a local checkpoint path"
        )
    return weights.get_state_dict(progress=False)


def load_pretrained(model: nn.Module, model_name: str, source: str, trusted: bool = False) -> dict[str, Any]:
    """Load `source` into `model` in place; returns a report of what was loaded and dropped.

    A file loads weights-only; `trusted` (run.trust_checkpoint) allows a full unpickle of one that needs it."""
    path = Path(source).expanduser()
    if path.is_file():
        state = _read_checkpoint(path, trusted)
    else:
        weights = _resolve_weights(model_name, source)
        if weights is None:
            raise ConfigError(
                f"model.pretrained={source!r}: no such file, and not a torchvision weights name "
                "(e.g. ResNet18_Weights.IMAGENET1K_V1 or DEFAULT)"
            )
        state = _download_or_cached(weights, source)
    return load_matching(model, _strip_wrappers(state), source)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    own = model.state_dict()
    head = head_prefixes(model)
    loadable, dropped, unexpected = {}, [], []
    for key, value in state.items():
        if key not in own:
            unexpected.append(key)
        elif own[key].shape != value.shape:
            dropped.append(key)
        else:
            loadable[key] = value
    missing = [k for k in own if k not in loadable and k not in dropped]
    missing_backbone = [k for k in missing if not _in_head(k, head) and not k.endswith("num_batches_tracked")]
    if not loadable or missing_backbone:
        example = ", ".join(missing_backbone[:3]) or "every key"
        raise ConfigError(
            f"model.pretrained={source}: the weights do not fit this model ({len(missing_backbone) or len(own)} "
            f"keys missing, e.g. {example}); check model.name, model.cifar_stem and model.norm"
        )
    model.load_state_dict(loadable, strict=False)
    report = {
        "source": str(source),
        "loaded": len(loadable),
        "dropped_shape_mismatch": dropped,
        "new_head": any(_in_head(k, head) for k in dropped + missing),
        "ignored_unexpected": unexpected,
    }
    if dropped:
        log.warning(
            "pretrained %s: %d keys re-initialised (shape differs): %s",
            source,
            len(dropped),
            ", ".join(dropped),
        )
    return report


def freeze_all_but_head(model: nn.Module) -> list[str]:
    """requires_grad=False everywhere except the classifier head; returns the head's names."""
    head = head_prefixes(model)
    if not head:
        raise ConfigError("model.freeze_backbone=true: cannot find a classifier head (fc, classifier, head)")
    for name, param in model.named_parameters():
        param.requires_grad_(_in_head(name, head))
    return head
