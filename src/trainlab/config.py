"""The run configuration: schema, YAML loading with `base:` inheritance, overrides, validation.

OmegaConf does the loading, merging and dotted-key overrides against a structured (dataclass) schema;
this module only adds what OmegaConf lacks: `base:` chains relative to the including file, and error
messages that name the key, the value and what would be valid.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from trainlab.errors import ConfigError
from trainlab.watch.settings import WatchSettings


@dataclass
class DataConfig:
    name: str = "shapes"  # shapes | cifar10 | cifar100 | folder | packed
    root: Optional[str] = None
    img_size: int = 32
    batch_size: Any = 64  # per process: an int, or "auto" (largest that fits, GPU only)
    val_batch_size: Optional[int] = None  # defaults to batch_size
    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = False
    loader: str = "auto"  # auto | tensor | torch
    train_size: int = 4000  # shapes only
    val_size: int = 1000  # shapes only
    download: bool = False  # cifar only: use torchvision's download when a network exists
    skip_bad_images: bool = False
    mean: Optional[list[float]] = None  # normalisation; defaults per dataset
    std: Optional[list[float]] = None


@dataclass
class AugConfig:
    policy: str = "flip-crop"  # none | flip-crop | randaugment | trivialaugment | autoaugment
    random_erasing: float = 0.0  # probability
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5


@dataclass
class ModelConfig:
    name: str = "resnet20"
    num_classes: Optional[int] = None  # defaults to the dataset's class count
    cifar_stem: bool = False
    norm: str = "batch"  # batch | none
    pretrained: Optional[str] = None  # a local checkpoint path or a torchvision weights name
    freeze_backbone: bool = False
    sync_bn: bool = False


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw | adagrad | adadelta | rmsprop
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    no_decay_norm_bias: bool = False
    lr_scale: str = "none"  # none | linear (lr * global_batch / 256)


@dataclass
class SchedConfig:
    name: str = "onecycle"  # constant | step | multistep | onecycle | cosine
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    step_size: int = 30  # step: epochs between decays
    gamma: float = 0.1  # step / multistep decay factor
    milestones: list[int] = field(default_factory=list)  # multistep: epochs
    min_lr: float = 0.0  # cosine floor
    max_lr: Optional[float] = None  # onecycle peak; defaults to optim.lr
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    total_steps: Optional[int] = None  # onecycle: set by hand only to reproduce a setup; checked


@dataclass
class TrainConfig:
    epochs: int = 4  # with the defaults above: `trainlab train` is the one-minute CPU demo
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | 32 | bf16 | fp16   (auto: bf16 on a GPU that has it, else 32)
    channels_last: Optional[bool] = None  # null: on for conv nets on a GPU
    compile: str = "none"  # none | default | reduce-overhead | max-autotune
    grad_accum: int = 1
    clip_grad: Optional[float] = None  # max global grad norm
    label_smoothing: float = 0.0
    seed: int = 0
    deterministic: bool = False
    ema_decay: Optional[float] = None
    ema_warmup: bool = True
    max_steps_per_epoch: Optional[int] = None  # cap for smoke tests
    nproc: int = 1  # >1 launches itself through torchrun
    threads: Optional[int] = None  # torch CPU threads; null leaves torch's default
    preflight: bool = False  # run the doctor's cheap checks before step 1; logged as `preflight` events


@dataclass
class EvalConfig:
    tta: str = "none"  # none | flip
    every: int = 1  # validate every N epochs (and always after the last)


@dataclass
class RunConfig:
    dir: Optional[str] = None  # default: runs/<name>-<timestamp>
    name: Optional[str] = None  # default: <model>-<data>
    resume: str = "auto"  # auto | never | PATH
    resume_force: bool = False
    save_top_k: int = 1
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0
    keep_periodic: int = 2
    tensorboard: bool = True
    progress: str = "auto"  # auto | bar | lines | none


@dataclass
class DistConfig:
    backend: str = "auto"  # auto | nccl | gloo
    timeout_s: float = 300.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    watch: WatchSettings = field(default_factory=WatchSettings)
    dist: DistConfig = field(default_factory=DistConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("shapes", "cifar10", "cifar100", "folder", "packed"),
    "data.loader": ("auto", "tensor", "torch"),
    "aug.policy": ("none", "flip-crop", "randaugment", "trivialaugment", "autoaugment"),
    "model.norm": ("batch", "none"),
    "optim.name": ("sgd", "adam", "adamw", "adagrad", "adadelta", "rmsprop"),
    "optim.lr_scale": ("none", "linear"),
    "sched.name": ("constant", "step", "multistep", "onecycle", "cosine"),
    "train.precision": ("auto", "32", "bf16", "fp16"),
    "train.compile": ("none", "default", "reduce-overhead", "max-autotune"),
    "eval.tta": ("none", "flip"),
    "run.progress": ("auto", "bar", "lines", "none"),
    "dist.backend": ("auto", "nccl", "gloo"),
    "watch.on_nonfinite": ("warn", "skip", "stop"),
}


# ---------------------------------------------------------------- loading


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node[k], full + ".") if OmegaConf.is_dict(node[k]) else [])
    return keys


def _closest(key: str) -> str:
    valid = _all_keys(OmegaConf.structured(Config))
    leaf = key.rsplit(".", 1)[-1]
    # A known leaf in the wrong (or no) section, e.g. 'lr' -> 'optim.lr', beats spelling similarity.
    match = [k for k in valid if k.rsplit(".", 1)[-1] == leaf and k != key][:1]
    if not match:
        match = difflib.get_close_matches(key, valid, n=1, cutoff=0.4)
    return match[0] if match else ""


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and not isinstance(err, ValidationError):
        hint = _closest(key)
        tail = f"; did you mean '{hint}'?" if hint else ""
        return ConfigError(f"{source}: unknown config key '{key}'{tail}")
    if isinstance(err, ValidationError):
        value = getattr(err, "msg", str(err)).split("\n")[0]
        expected = _expected_type(key)
        exp = f" (expected {expected})" if expected else ""
        return ConfigError(f"{source}: bad value for '{key}'{exp}: {value}")
    return ConfigError(f"{source}: {str(err).splitlines()[0]}")


def _expected_type(key: str) -> str:
    """The schema's type for a dotted key, as a person writes it (int, float, bool, str, list[int]...)."""
    import dataclasses
    import typing

    node: Any = Config
    for part in key.split(".")[:2]:
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return ""
        node = typing.get_type_hints(node)[part]
    text = getattr(node, "__name__", None) if isinstance(node, type) else str(node)
    return (text or "").replace("typing.", "").replace("Optional[", "null or ").rstrip("]") if text else ""


def _read_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """The file and its `base:` ancestors, oldest first. Bases are relative to the including file."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config inheritance cycle: {chain}; remove one of the 'base:' keys")
    if not path.is_file():
        who = f" (named as base: in {seen[-1]})" if seen else ""
        raise ConfigError(f"config file not found: {path}{who}")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers; keep the first line
        raise ConfigError(f"{path}: cannot parse YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(node).__name__}")
    base = node.pop("base", None)
    chain: list[tuple[Path, DictConfig]] = []
    if base is not None:
        bases = [base] if isinstance(base, str) else list(base) if isinstance(base, ListConfig) else None
        if bases is None:
            raise ConfigError(f"{path}: 'base' must be a file name or a list of them, got {base!r}")
        for b in bases:
            chain.extend(_read_yaml_chain(path.parent / str(b), (*seen, path)))
    chain.append((path, node))
    return chain


def load_config(path: Optional[str | Path] = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema defaults <- YAML chain (bases first) <- `key=value` overrides; validated and read-only."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    if path is not None:
        for file, node in _read_yaml_chain(Path(path)):
            try:
                cfg = OmegaConf.merge(cfg, node)
            except OmegaConfBaseException as err:
                raise _explain(err, str(file)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. optim.lr=0.05)")
        key = item.split("=", 1)[0].strip()
        if "." not in key:
            hint = _closest(key)
            raise ConfigError(f"override '{item}': keys are section.key; did you mean '{hint}'?")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _explain(err, "command line") from None
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg  # a DictConfig that behaves like Config (attribute access, typed)


def validate(cfg: Any) -> None:
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = str(cfg[section][key])
        if section == "run" and key == "resume":
            continue
        if value not in choices:
            raise ConfigError(f"{dotted}={value!r} is not valid; choose one of: {', '.join(choices)}")
    bs = cfg.data.batch_size
    if not (bs == "auto" or (isinstance(bs, int) and not isinstance(bs, bool) and bs > 0)):
        if isinstance(bs, str) and bs.isdigit() and int(bs) > 0:
            cfg.data.batch_size = int(bs)
        else:
            raise ConfigError(f"data.batch_size={bs!r} is not valid; give a positive int or 'auto'")
    positive = {
        "data.img_size": cfg.data.img_size,
        "train.epochs": cfg.train.epochs,
        "train.grad_accum": cfg.train.grad_accum,
        "train.nproc": cfg.train.nproc,
        "data.train_size": cfg.data.train_size,
        "data.val_size": cfg.data.val_size,
        "eval.every": cfg.eval.every,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value} must be positive")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers={cfg.data.num_workers} must be 0 or more")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr} must be positive")
    if not 0.0 <= cfg.train.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing={cfg.train.label_smoothing} must be in [0, 1)")
    if cfg.train.ema_decay is not None and not 0.0 < cfg.train.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay={cfg.train.ema_decay} must be in (0, 1)")
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"train.device={dev!r} is not valid; choose auto, cpu, cuda, cuda:N or mps")
    if cfg.data.name in ("folder", "packed") and not cfg.data.root:
        raise ConfigError(f"data.name={cfg.data.name} needs data.root=PATH (the dataset folder)")
    if cfg.model.num_classes is not None and cfg.model.num_classes < 1:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} must be positive")


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_dict(values: dict) -> Any:
    """Rebuild a validated config from a saved dict (config.yaml, a checkpoint)."""
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.create(values))
    except OmegaConfBaseException as err:
        raise _explain(err, "saved config") from None
    validate(cfg)
    return cfg


def replace(cfg: Any, **dotted: Any) -> Any:
    """A copy of `cfg` with `section.key` values changed, e.g. replace(cfg, **{"train.epochs": 5})."""
    values = to_dict(cfg)
    for key, value in dotted.items():
        section, name = key.split(".", 1)
        values[section][name] = value
    return from_dict(values)
