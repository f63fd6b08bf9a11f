"""What a user brings: their model, data, loss, transforms and callbacks, as Python objects handed to
`trainlab.fit` or as import paths in the config (`model.name: mypkg.nets:make_net`).

`UserParts.resolve(cfg, given)` turns the config's import paths into objects (those given as objects win) and
checks what it gets, so every entry point (`trainlab train`, `fit`, `sweep`, `doctor`, `eval`, the batch finder)
builds the same parts. A module is imported from the config file's folder (`run.config_dir`) and `sys.path`.
Every mistake is one line (ConfigError, exit 2): the module that is not there (and where it was looked for),
the attribute that is not there (and the closest names the module has), a value that is not callable, a
factory that returns the wrong kind of thing.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from trainlab.errors import ConfigError

BUILTIN_LOSS = "cross_entropy"


def is_import_path(name: Any) -> bool:
    """`pkg.module:attribute` (timm names are `timm/<name>`, registry names have no colon)."""
    if not isinstance(name, str) or name.count(":") != 1:
        return False
    module, attr = name.split(":")
    return bool(module) and bool(attr) and all(part.isidentifier() for part in (*module.split("."), *attr.split(".")))


def is_object_name(name: Any) -> bool:
    """The name a config records for a Python object handed to `trainlab.fit` (`<mypkg.nets.Net>`)."""
    return isinstance(name, str) and name.startswith("<") and name.endswith(">")


def object_name(obj: Any) -> str:
    kind = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    return f"<{kind.__module__}.{kind.__qualname__}>"


def short_name(name: str) -> str:
    """A name fit for a folder: `mypkg.nets:make_net` -> make_net, `<mypkg.nets.Net>` -> Net."""
    if is_import_path(name):
        return name.split(":")[1].rsplit(".", 1)[-1]
    if is_object_name(name):
        return name[1:-1].rsplit(".", 1)[-1]
    return name


def _search_path(config_dir: Optional[str]) -> list[str]:
    return ([str(Path(config_dir))] if config_dir else []) + [p or "." for p in sys.path]


def load_object(spec: str, key: str, config_dir: Optional[str] = None, need_callable: bool = True) -> Any:
    """The object `pkg.module:attribute` names, imported from the config's folder and sys.path."""
    if not is_import_path(spec):
        raise ConfigError(f"{key}={spec!r} is not an import path; write it as pkg.module:attribute")
    module_name, attr = spec.split(":")
    if config_dir and str(Path(config_dir)) not in sys.path:
        sys.path.insert(0, str(Path(config_dir)))  # modules beside the config file, as a script's folder is
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            tried = _search_path(config_dir)
            shown = ", ".join(tried[:4]) + (f" and {len(tried) - 4} more" if len(tried) > 4 else "")
            raise ConfigError(
                f"{key}={spec}: no module named {err.name!r} (looked in {shown}); put it beside the config "
                "file, install it, or add its folder to PYTHONPATH"
            ) from None
        raise ConfigError(f"{key}={spec}: importing {module_name} failed: {err}") from None
    except Exception as err:  # the user's module itself raised while importing
        where = _user_frame(err)
        raise ConfigError(f"{key}={spec}: importing {module_name} failed: {type(err).__name__}: {err}{where}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = f"; closest: {', '.join(close)}" if close else f"; it has: {', '.join(names[:8]) or 'nothing public'}"
            raise ConfigError(f"{key}={spec}: {module_name} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    if need_callable and not callable(obj):
        raise ConfigError(f"{key}={spec} is {type(obj).__name__} {obj!r:.40}, not a callable")
    return obj


def _user_frame(err: BaseException) -> str:
    """` (file.py:12)` for the innermost frame of a traceback, where the user's code went wrong."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" ({Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno})" if tb is not None else ""


def call_user(fn: Callable, key: str, *args: Any, **kwargs: Any) -> Any:
    """Call a user's factory; what it raises becomes one line naming the key and where it went wrong."""
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        raise
    except TypeError as err:
        raise ConfigError(f"{key}: calling {_name(fn)} failed: {err}; check its *_kwargs keys") from None
    except Exception as err:
        raise ConfigError(f"{key}: {_name(fn)} raised {type(err).__name__}: {err}{_user_frame(err)}") from None


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def accepts(fn: Callable, name: str) -> bool:
    """Whether `fn` takes a keyword argument `name` (or any keyword)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def required_positionals(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)


@dataclass
class UserParts:
    """The user's own parts, each None where trainlab builds its own."""

    model: Any = None  # an nn.Module, or a callable num_classes -> nn.Module
    train_data: Any = None  # a map-style Dataset of (image, label), or an iterable of (images, labels) batches
    val_data: Any = None
    class_names: Optional[list[str]] = None  # a data factory's optional third item
    loss_fn: Optional[Callable] = None  # (logits, targets) -> scalar loss
    train_transform: Optional[Callable] = None  # on one sample's image
    val_transform: Optional[Callable] = None
    callbacks: list[Any] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return self.train_data is not None

    @classmethod
    def resolve(cls, cfg: Any, given: Optional[UserParts] = None) -> UserParts:
        """`given`'s objects, completed from the config's import paths (what a run uses)."""
        parts = cls(**vars(given)) if given is not None else cls()
        parts.callbacks = list(parts.callbacks)
        where = cfg.run.config_dir
        if parts.model is None and is_import_path(cfg.model.name):
            parts.model = load_object(cfg.model.name, "model.name", where)
        if parts.train_data is None and is_import_path(cfg.data.name):
            parts.train_data, parts.val_data, parts.class_names = load_data(cfg)
        if parts.loss_fn is None:
            parts.loss_fn = load_loss(cfg)
        for key in ("train_transform", "val_transform"):
            if getattr(parts, key) is None:
                setattr(parts, key, load_transform(cfg, key))
        parts.callbacks += [_callback(entry, where) for entry in cfg.train.callbacks or []]
        return parts


def load_data(cfg: Any) -> tuple[Any, Any, Optional[list[str]]]:
    """`data.name: pkg.mod:factory` called with data.kwargs: (train, val[, class_names])."""
    factory = load_object(cfg.data.name, "data.name", cfg.run.config_dir)
    return _data_pair(call_user(factory, "data.name", **dict(cfg.data.kwargs or {})), cfg.data.name)


def load_loss(cfg: Any) -> Optional[Callable]:
    """`train.loss` as a callable, None for the built-in cross-entropy."""
    if cfg.train.loss == BUILTIN_LOSS:
        return None
    return _loss(load_object(cfg.train.loss, "train.loss", cfg.run.config_dir), dict(cfg.train.loss_kwargs or {}))


def load_transform(cfg: Any, key: str) -> Optional[Callable]:
    """`aug.train_transform` / `aug.val_transform` as a callable on one image, None when unset."""
    spec = cfg.aug[key]
    return _transform(load_object(spec, f"aug.{key}", cfg.run.config_dir), f"aug.{key}") if spec else None


def _data_pair(made: Any, spec: str) -> tuple[Any, Any, Optional[list[str]]]:
    if not isinstance(made, (tuple, list)) or len(made) not in (2, 3):
        got = type(made).__name__ + (f" of {len(made)}" if isinstance(made, (tuple, list)) else "")
        raise ConfigError(f"data.name={spec} returned a {got}; expected (train, val) or (train, val, class_names)")
    train, val = made[0], made[1]
    names = list(map(str, made[2])) if len(made) == 3 and made[2] is not None else None
    return train, val, names


def _loss(target: Any, kwargs: dict) -> Callable:
    """A loss class (nn.CrossEntropyLoss, FocalLoss) is built with the kwargs; a function gets them per call."""
    if inspect.isclass(target):
        return call_user(target, "train.loss", **kwargs)
    if kwargs:
        import functools

        return functools.partial(target, **kwargs)
    return target


def _transform(target: Any, key: str) -> Callable:
    """A class or a zero-argument function builds the transform; a function of the image is the transform."""
    if inspect.isclass(target) or (inspect.isfunction(target) and required_positionals(target) == 0):
        made = call_user(target, key)
        if not callable(made):
            raise ConfigError(f"{key}: {_name(target)}() returned {type(made).__name__}, not a callable transform")
        return made
    return target


def _callback(entry: Any, where: Optional[str]) -> Any:
    """`pkg.mod:Callback` or `{target: pkg.mod:Callback, key: value...}` (the other keys are its kwargs)."""
    if isinstance(entry, str):
        target, kwargs = entry, {}
    else:
        kwargs = {str(k): v for k, v in dict(entry).items()}
        target = kwargs.pop("target", None)
        if not isinstance(target, str):
            raise ConfigError(f"train.callbacks: {dict(entry)} needs target: pkg.module:Callback")
    made = load_object(target, "train.callbacks", where, need_callable=False)
    return call_user(made, "train.callbacks", **kwargs) if inspect.isclass(made) or kwargs else made
