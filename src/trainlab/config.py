"""The run configuration: schema, YAML loading with `base:` inheritance, overrides, validation.

OmegaConf does the loading, merging and dotted-key overrides against a structured (dataclass) schema;
this module only adds what OmegaConf lacks: `base:` chains relative to the including file, and error
messages that name the key, the value and what would be valid.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from trainlab.errors import ConfigError, UsageError
from trainlab.user import is_import_path, is_object_name, object_name
from trainlab.watch.settings import WatchSettings


@dataclass
class DataConfig:
    # shapes | cifar10 | cifar100 | folder | packed, or an import path pkg.module:factory returning
    # (train, val) or (train, val, class_names) datasets, called with data.kwargs
    name: str = "shapes"
    kwargs: dict[str, Any] = field(default_factory=dict)
    root: Optional[str] = None
    # An int, or a progressive-resizing schedule [[fraction of training, size], ...] starting at 0, e.g.
    # [[0, 160], [0.75, 192]]: epoch e trains at the size whose fraction <= (e - 1) / train.epochs;
    # evaluation uses the last size (img_size_schedule / final_img_size below).
    img_size: Any = 32
    batch_size: Any = 64  # per process: an int, or "auto" (largest that fits, GPU only)
    val_batch_size: Optional[int] = None  # defaults to batch_size
    num_workers: int = 0
    pin_memory: bool = True
    persistent_workers: bool = False
    loader: str = "auto"  # auto | tensor | torch | stream (stream: packed data only, read in chunks, never copied whole)
    # data.loader=auto copies a dataset into host/device memory only when it fits this many GB (and the
    # free host and device memory); null: half of the free memory. Larger packed sets stream instead.
    memory_budget_gb: Optional[float] = None
    train_size: int = 4000  # shapes only
    val_size: int = 1000  # shapes only
    download: bool = False  # cifar only: use torchvision's download when a network exists
    skip_bad_images: bool = False
    mean: Optional[list[float]] = None  # normalisation; defaults per dataset
    std: Optional[list[float]] = None


@dataclass
class AugConfig:
    policy: str = "flip-crop"  # none | flip-crop | randaugment | trivialaugment | autoaugment
    # Geometry (data/augment.py). auto: pad-crop when the stored images are about data.img_size, a random
    # resized crop otherwise; aug.policy=none keeps meaning "no crop, no flip" unless crop/hflip are given.
    crop: str = "auto"  # auto | resized | pad | none
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # resized crop: area fraction range
    ratio: list[float] = field(default_factory=lambda: [0.75, 4.0 / 3.0])  # resized crop: aspect range
    hflip: Optional[float] = None  # horizontal flip probability; 0 turns it off; null: 0.5 (0 with policy=none)
    random_erasing: float = 0.0  # probability
    # Your own per-sample transforms, as import paths (pkg.module:callable): a function of the image, or a class /
    # zero-argument function that builds one (torchvision v2, albumentations, kornia). They replace trainlab's.
    train_transform: Optional[str] = None
    val_transform: Optional[str] = None
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5


@dataclass
class ModelConfig:
    # A registry name (trainlab inspect --list), timm/<name>, or an import path pkg.module:factory returning an
    # nn.Module, called with model.kwargs (and num_classes= when it takes it)
    name: str = "resnet20"
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: Optional[int] = None  # defaults to the dataset's class count
    cifar_stem: bool = False
    norm: str = "batch"  # batch | none
    pretrained: Optional[str] = None  # a local checkpoint path or a torchvision weights name
    freeze_backbone: bool = False
    sync_bn: bool = False
    # Dropout before the classifier: CIFAR ResNets (null: none) and timm/ models (null: timm's default).
    drop_rate: Optional[float] = None
    drop_path_rate: Optional[float] = None  # timm/ models: stochastic depth (null: timm's default)
    # googlenet / inception_v3: keep the auxiliary classifiers and add their losses (weights 0.3 / 0.4, as in
    # the papers); false (default, like timm) builds them without. Other models have none: ignored.
    aux_logits: bool = False


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
    # When a resume changes train.epochs or the steps per epoch and so the LR curve: refuse (name the
    # jump), hold (the LR of the run's last step, constant; refused below 1% of the peak), restart (a new
    # schedule over the steps left).
    extend: str = "refuse"


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
    # average: BatchNorm running stats averaged with the EMA's decay, like its weights (timm, torchvision);
    # copy: the live model's statistics (trainlab before issue 26)
    ema_buffers: str = "average"
    max_steps_per_epoch: Optional[int] = None  # cap for smoke tests, in optimizer steps (micro_batch_cap)
    nproc: int = 1  # >1 launches itself through torchrun
    threads: Optional[int] = None  # torch CPU threads; null leaves torch's default
    # >0: a rank that dies (SIGKILL, OOM kill, lost node) restarts the workers (torchrun --max-restarts) and
    # the job continues in-job from the newest checkpoint; 0 keeps "a dead rank ends the job".
    max_restarts: int = 0
    preflight: bool = False  # run the doctor's cheap checks before step 1; logged as `preflight` events
    # cross_entropy (with label_smoothing), or an import path to loss(logits, targets) -> scalar: a function
    # (called with loss_kwargs too) or a class such as torch.nn:CrossEntropyLoss (built with loss_kwargs)
    loss: str = "cross_entropy"
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    # Objects with on_* hooks (trainlab.Callback), as import paths: "pkg.module:Callback" or
    # {target: "pkg.module:Callback", key: value, ...} (the other keys are its keyword arguments)
    callbacks: list[Any] = field(default_factory=list)


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
    # Checkpoint files (run.resume, auto-resume, model.pretrained, `trainlab eval`) load weights-only: a file
    # that needs a full unpickle, which can run code, is refused unless this says the file is trusted.
    trust_checkpoint: bool = False
    save_top_k: int = 1
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0
    keep_periodic: int = 2
    tensorboard: bool = True
    progress: str = "auto"  # auto | bar | lines | none
    # run.dir may be an object-store URL (s3://bucket/runs/r50, gs://, az://, file://): the run works in this
    # local folder (null: ~/.cache/trainlab/runs/<protocol>/<bucket>/<path>) and uploads to the store.
    cache_dir: Optional[str] = None
    storage_options: dict[str, Any] = field(default_factory=dict)  # passed to the fsspec file system (endpoint, profile...)
    upload_wait_s: float = 120.0  # at a stop or the end: how long to retry uploads while the store fails
    # a store run dir's lease (one writer per run dir across machines): renewed every third of this; a second
    # run waits up to this long for a live lease to end or run out, then is refused
    lease_s: float = 60.0
    # aws | gcp | URL: poll the instance metadata for a spot/preemption notice and stop as on SIGTERM.
    preemption_notice: Optional[str] = None
    preemption_poll_s: float = 10.0  # seconds between two polls of the notice endpoint
    config_dir: Optional[str] = None  # the config file's folder (set when loading it): user modules import from it


@dataclass
class LogConfig:
    # Experiment trackers fed by the run's logger (trainlab.runlog.trackers): tensorboard | mlflow | wandb.
    # TensorBoard also needs run.tensorboard=true (the older switch still turns it off).
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    mlflow_uri: Optional[str] = None  # null: embedded SQLite store beside the run dir (RUN_DIR/../mlflow.db)
    experiment: str = "trainlab"  # MLflow experiment / wandb project
    upload_checkpoints: bool = False  # also keep the best checkpoint(s) as tracker artifacts


@dataclass
class DistConfig:
    backend: str = "auto"  # auto | nccl | gloo
    timeout_s: float = 300.0
    # Ranks agree on stop signals and time-based checkpoints every N optimizer steps (one small collective
    # on the host, never the device): a stop lands at most N steps after the signal.
    stop_check_every: int = 10


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
    log: LogConfig = field(default_factory=LogConfig)
    dist: DistConfig = field(default_factory=DistConfig)


TRACKERS = ("tensorboard", "mlflow", "wandb")  # log.trackers: runlog/trackers/ has one module each

CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("shapes", "cifar10", "cifar100", "folder", "packed"),
    "data.loader": ("auto", "tensor", "torch", "stream"),
    "aug.crop": ("auto", "resized", "pad", "none"),
    "aug.policy": ("none", "flip-crop", "randaugment", "trivialaugment", "autoaugment"),
    "model.norm": ("batch", "none"),
    "optim.name": ("sgd", "adam", "adamw", "adagrad", "adadelta", "rmsprop"),
    "optim.lr_scale": ("none", "linear"),
    "sched.name": ("constant", "step", "multistep", "onecycle", "cosine"),
    "sched.extend": ("refuse", "hold", "restart"),
    "train.precision": ("auto", "32", "bf16", "fp16"),
    "train.compile": ("none", "default", "reduce-overhead", "max-autotune"),
    "train.ema_buffers": ("average", "copy"),
    "eval.tta": ("none", "flip"),
    "run.progress": ("auto", "bar", "lines", "none"),
    "dist.backend": ("auto", "nccl", "gloo"),
    "watch.on_nonfinite": ("warn", "skip", "stop"),
}


@dataclass(frozen=True)
class Range:
    """The values a number key accepts: `low`/`high` are included unless `*_open`; None is unbounded. NaN and
    the infinities are never in a range (no key means anything by them; torch overflows on some)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        if self.high is None:
            return "must be positive" if self.low_open and self.low == 0 else f"must be {_bound(self.low)} or more"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"must be in {left}{_bound(self.low)}, {_bound(self.high)}{right}"


def _bound(value: Optional[float]) -> str:
    """A range's end as a person reads it: 16777216, not 1.67772e+07; 0.5 and 1e-06 as %g writes them."""
    if value is not None and float(value).is_integer() and abs(value) < 1e16:
        return str(int(value))
    return f"{value:g}"


def _upto(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Range:
    return Range(low, high, low_open, high_open)


PROBABILITY = Range(0, 1)
FRACTION = Range(0, 1, high_open=True)  # a share that must leave something: dropout, momentum, smoothing
SHARE = Range(0, 1, low_open=True)  # a share of the run, of a window... that must be more than nothing
COUNT = _upto(1, 10**9)  # a window, an interval, a number of steps or epochs: at least one
STEPS = _upto(0, 10**12)  # a number of steps where 0 means "off" or "from the start"
LR = _upto(0, 1e4, low_open=True)  # optim.lr 1e300 overflowed torch's float32 LR tensors
BIG = 1e12  # a bound on floats that only need to be finite: thresholds in MB or ms, ratios, factors

# The numeric keys' valid ranges (a null, where the key allows one, is always fine). For a list (optim.betas,
# aug.scale, sched.milestones...) every element is checked, and data.img_size's sizes, whether an int or a
# schedule. validate() checks them, test_every_numeric_key_has_a_range keeps the table whole, and the bad-input
# matrix (tests/test_error_matrix.py) feeds each key a value below and above its range.
RANGES: dict[str, Range] = {
    "data.img_size": _upto(2, 8192), "data.batch_size": _upto(1, 2**24), "data.val_batch_size": _upto(1, 2**24),
    "data.num_workers": _upto(0, 1024), "data.memory_budget_gb": _upto(0, 1e6, low_open=True),
    "data.train_size": _upto(1, 10**8), "data.val_size": _upto(1, 10**8),
    "data.mean": _upto(-1e3, 1e3), "data.std": _upto(0, 1e3, low_open=True),
    "aug.scale": SHARE, "aug.ratio": _upto(0, 1e3, low_open=True), "aug.hflip": PROBABILITY,
    "aug.random_erasing": PROBABILITY, "aug.mixup_alpha": _upto(0, 1e3), "aug.cutmix_alpha": _upto(0, 1e3),
    "aug.mix_prob": PROBABILITY, "aug.switch_prob": PROBABILITY,
    "model.num_classes": _upto(1, 10**7), "model.drop_rate": FRACTION, "model.drop_path_rate": FRACTION,
    "optim.lr": LR, "optim.momentum": FRACTION, "optim.weight_decay": _upto(0, 1e3),
    "optim.betas": FRACTION, "optim.eps": _upto(0, 1, low_open=True),
    "sched.warmup_epochs": _upto(0, 10**7), "sched.warmup_steps": STEPS, "sched.step_size": COUNT,
    "sched.gamma": _upto(0, 1e3, low_open=True), "sched.milestones": COUNT, "sched.min_lr": _upto(0, 1e4),
    "sched.max_lr": LR, "sched.pct_start": Range(0, 1, low_open=True, high_open=True),
    "sched.div_factor": _upto(0, BIG, low_open=True), "sched.final_div_factor": _upto(0, BIG, low_open=True),
    "sched.total_steps": _upto(1, 10**12),
    "train.epochs": _upto(1, 10**6), "train.grad_accum": _upto(1, 10**5), "train.clip_grad": _upto(0, BIG, True),
    "train.label_smoothing": FRACTION, "train.seed": _upto(0, 2**63 - 1), "train.ema_decay": Range(0, 1, True, True),
    "train.max_steps_per_epoch": _upto(1, 10**12), "train.nproc": _upto(1, 4096), "train.threads": _upto(1, 4096),
    "train.max_restarts": _upto(0, 10**4),
    "eval.every": _upto(1, 10**6),
    "run.save_top_k": _upto(-1, 10**6),  # -1: keep every best file
    "run.checkpoint_every_steps": STEPS, "run.checkpoint_every_minutes": _upto(0, 10**7),
    "run.keep_periodic": _upto(0, 10**6),
    "run.upload_wait_s": _upto(0, 10**7), "run.lease_s": _upto(3, 86400), "run.preemption_poll_s": _upto(0, 86400, low_open=True),
    "dist.timeout_s": _upto(0, 10**7, low_open=True), "dist.stop_check_every": _upto(1, 10**6),
    # the watch: print_every=0 prints no step lines; a window or interval counts steps (at least 1); the
    # trend detectors need two samples; shares are of a window, of free memory, of the planned steps
    "watch.print_every": _upto(0, 10**7), "watch.sample_interval_s": _upto(0, 86400, low_open=True),
    "watch.bottleneck_warning": PROBABILITY, "watch.bottleneck_critical": PROBABILITY,
    "watch.bottleneck_cpu_warning": PROBABILITY, "watch.bottleneck_window": COUNT,
    "watch.bottleneck_min_wait_ms": _upto(0, BIG),
    "watch.spike_mads": _upto(0, BIG), "watch.spike_min_ratio": _upto(1, BIG), "watch.spike_window": COUNT,
    "watch.leak_min_mb_per_epoch": _upto(0, BIG), "watch.leak_min_projected_frac": _upto(0, BIG),
    "watch.leak_min_total_mb": _upto(0, BIG), "watch.leak_sample_every": COUNT, "watch.leak_window": _upto(2, 10**9),
    "watch.leak_min_samples": _upto(2, 10**9), "watch.leak_min_tau": _upto(-1, 1), "watch.leak_warmup_steps": STEPS,
    "watch.not_learning_epochs": COUNT, "watch.not_learning_window": COUNT,
    "watch.not_learning_min_drop": PROBABILITY, "watch.chance_margin": PROBABILITY,
    "watch.progress_min_frac": PROBABILITY, "watch.progress_min_steps": STEPS, "watch.progress_window_frac": SHARE,
    "watch.progress_min_drop": PROBABILITY, "watch.progress_min_rate": _upto(0, BIG),
    "watch.progress_slope_sigmas": _upto(0, 1e3), "watch.progress_confirm": COUNT,
    "watch.progress_val_frac": PROBABILITY,
    "watch.weights_min_move": _upto(0, BIG), "watch.weights_min_norm_ratio": PROBABILITY,
    "watch.weights_chance_frac": _upto(0, 1e3), "watch.weights_min_steps": STEPS, "watch.weights_min_frac": PROBABILITY,
    "watch.weights_max_frac": PROBABILITY,
    "watch.input_max_abs_mean": _upto(0, BIG, low_open=True), "watch.input_max_std": _upto(0, BIG, low_open=True),
    "watch.input_min_std": _upto(0, BIG), "watch.divergence_window": _upto(4, 10**9),
    "watch.divergence_ratio": _upto(1, BIG), "watch.straggler_ratio": _upto(1, BIG),
    "watch.bottleneck_min_samples": COUNT, "watch.bottleneck_min_lost_s": _upto(0, BIG),
    "watch.bottleneck_clear_frac": PROBABILITY, "watch.spike_min_level": _upto(0, BIG),
    "watch.leak_min_kb_per_step": _upto(0, BIG), "watch.leak_min_steadiness": _upto(0, BIG),
    "watch.chance_flat_drop": PROBABILITY, "watch.chance_val_drop": PROBABILITY, "watch.chance_min_steps": COUNT,
    "watch.label_move_min": _upto(0, BIG), "watch.divergence_level_ratio": _upto(1, BIG),
    "watch.divergence_level_steps": COUNT,
}  # fmt: skip
# Keys whose value is one or more sizes checked apart (img_size may be a schedule, batch_size may be 'auto').
_CHECKED_APART = ("data.img_size", "data.batch_size")


# ---------------------------------------------------------------- loading


@functools.cache
def _schema_template() -> DictConfig:
    return OmegaConf.structured(Config)


FREE_FORM = ("data.kwargs", "model.kwargs", "train.loss_kwargs")  # the user's own keyword arguments


def _schema() -> DictConfig:
    """A fresh config of schema defaults: a copy of one built once (building takes ~4x longer than copying)."""
    cfg = copy.deepcopy(_schema_template())
    for dotted in FREE_FORM:  # any keys (a user's factory decides), where the rest of the schema is strict
        section, key = dotted.split(".")
        OmegaConf.set_struct(cfg[section][key], False)
    return cfg


def _open_mappings(cfg: DictConfig) -> DictConfig:
    """Keys whose value is a free mapping (the file system's own options) take any names under them."""
    OmegaConf.set_struct(cfg.run.storage_options, False)
    return cfg


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys.extend(_all_keys(node[k], full + ".") if OmegaConf.is_dict(node[k]) else [])
    return keys


def _closest(key: str) -> str:
    valid = _all_keys(_schema_template())
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
    text = (getattr(node, "__name__", None) if isinstance(node, type) else str(node)) or ""
    text = text.replace("typing.", "")
    if text.startswith("Optional[") and text.endswith("]"):  # only its own bracket goes: list[str] keeps its
        text = "null or " + text[len("Optional["):-1]
    return "" if text == "Any" else text


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


def split_config_and_overrides(items: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """A command line's `[CONFIG] [key=value ...]`: the config path (or None) and the overrides."""
    config, overrides = None, []
    for i, item in enumerate(items):
        if i == 0 and "=" not in item:
            config = item
        elif "=" in item:
            overrides.append(item)
        else:
            raise UsageError(f"unexpected argument '{item}': give CONFIG first, then key=value overrides")
    return config, overrides



def _parse_overrides(items: list[str]) -> DictConfig:
    """OmegaConf.from_dotlist, with a value YAML cannot parse ('[wip', an unclosed quote) named in one line."""
    import yaml

    try:
        return OmegaConf.from_dotlist(items)
    except yaml.YAMLError:
        for item in items:
            try:
                OmegaConf.from_dotlist([item])
            except yaml.YAMLError as err:
                problem = str(getattr(err, "problem", "") or str(err).splitlines()[0])
                raise ConfigError(
                    f"override '{item}': the value cannot be parsed ({problem}); quote it as text "
                    f"({item.split('=', 1)[0]}='\"...\"') or fix its brackets"
                ) from None
        raise



def _unmergeable(cfg: Any, items: list[str]) -> ConfigError:
    """The one-line error for the override OmegaConf cannot merge with TypeError (no full_key to name it)."""
    for item in items:
        try:
            OmegaConf.merge(cfg, _parse_overrides([item]))
        except (OmegaConfBaseException, TypeError) as err:
            key = item.split("=", 1)[0].strip()
            expected = _expected_type(key)
            exp = f" (expected {expected})" if expected else ""
            return ConfigError(f"command line: bad value for '{key}'{exp}: {str(err).splitlines()[0]}")
    return ConfigError(f"command line: the overrides {' '.join(items)} cannot be merged into the config")


def load_config(path: Optional[str | Path] = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema defaults <- YAML chain (bases first) <- `key=value` overrides; validated and read-only."""
    cfg = _schema()
    OmegaConf.set_struct(cfg, True)
    _open_mappings(cfg)
    if path is not None:
        for file, node in _read_yaml_chain(Path(path)):
            try:
                cfg = OmegaConf.merge(cfg, node)
            except OmegaConfBaseException as err:
                raise _explain(err, str(file)) from None
    if path is not None and cfg.run.config_dir is None:
        cfg.run.config_dir = str(Path(path).resolve().parent)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. optim.lr=0.05)")
        key = item.split("=", 1)[0].strip()
        if "." not in key:
            hint = _closest(key)
            raise ConfigError(f"override '{item}': keys are section.key; did you mean '{hint}'?")
    try:  # one merge for all: each merge re-validates the whole structured config (~30 ms apiece)
        cfg = OmegaConf.merge(cfg, _parse_overrides(list(overrides))) if overrides else cfg
    except OmegaConfBaseException as err:  # its full_key names the bad item
        raise _explain(err, "command line") from None
    except TypeError:  # OmegaConf's own, for a list given to a mapping key (model.kwargs=[1]): find the item
        raise _unmergeable(cfg, list(overrides)) from None
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg  # a DictConfig that behaves like Config (attribute access, typed)


def _resolve(cfg: Any) -> None:
    """Resolve every interpolation now (`${optim.lr}`, `${oc.env:HOME}`), so one that names a missing key or
    gives a value of the wrong type is a one-line error here, not an exception at first use mid-run."""
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        what = str(err).splitlines()[0] if str(err) else type(err).__name__
        where = f"'{key}'" if key else "the config"
        raise ConfigError(f"cannot resolve {where}: {what}; fix the ${{...}} reference or give a value") from None


def _in_range(dotted: str, value: Any, allowed: Range) -> None:
    values = list(value) if isinstance(value, (list, ListConfig)) else [value]
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item not in allowed:
            shown = list(value) if len(values) > 1 or isinstance(value, (list, ListConfig)) else value
            each = "each value " if isinstance(value, (list, ListConfig)) else ""
            raise ConfigError(f"{dotted}={shown} {each}{allowed.describe()}")


def validate(cfg: Any) -> None:
    _resolve(cfg)
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = str(cfg[section][key])
        if section == "run" and key == "resume":
            continue
        if dotted == "data.name" and (is_import_path(value) or is_object_name(value)):
            continue  # a user's dataset factory, or datasets handed to trainlab.fit
        if value not in choices:
            raise ConfigError(f"{dotted}={value!r} is not valid; choose one of: {', '.join(choices)}")
    bs = cfg.data.batch_size
    if not (bs == "auto" or (isinstance(bs, int) and not isinstance(bs, bool) and bs > 0)):
        if isinstance(bs, str) and bs.isdigit() and int(bs) > 0:
            cfg.data.batch_size = int(bs)
        else:
            raise ConfigError(f"data.batch_size={bs!r} is not valid; give a positive int or 'auto'")
    if cfg.data.batch_size != "auto":
        _in_range("data.batch_size", cfg.data.batch_size, RANGES["data.batch_size"])
    img_size_schedule(cfg.data.img_size)  # raises ConfigError when malformed or out of range
    for dotted in ("train.loss", "aug.train_transform", "aug.val_transform"):
        section, key = dotted.split(".")
        value = cfg[section][key]
        if value is not None and value != "cross_entropy" and not (is_import_path(value) or is_object_name(value)):
            builtin = "cross_entropy or " if key == "loss" else ""
            raise ConfigError(f"{dotted}={value!r} is not valid; give {builtin}an import path pkg.module:callable")
    for dotted, allowed in RANGES.items():
        section, key = dotted.split(".")
        value = cfg[section][key]
        if value is not None and dotted not in _CHECKED_APART:
            _in_range(dotted, value, allowed)
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"train.device={dev!r} is not valid; choose auto, cpu, cuda, cuda:N or mps")
    if cfg.data.name in ("folder", "packed") and not cfg.data.root:
        raise ConfigError(f"data.name={cfg.data.name} needs data.root=PATH (the dataset folder)")
    for name in cfg.log.trackers or []:  # a typo fails at start, not after an epoch
        if str(name).strip().lower() not in TRACKERS:
            raise ConfigError(f"log.trackers: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
    _validate_aug(cfg)
    if not OmegaConf.is_dict(cfg.run.storage_options) and not isinstance(cfg.run.storage_options, dict):
        raise ConfigError(f"run.storage_options={cfg.run.storage_options!r} must be a mapping of the file "
                          "system's options, e.g. run.storage_options={endpoint_url: http://host:9000}")  # fmt: skip
    for key in ("mean", "std"):  # normalisation is per channel, and images are RGB
        value = cfg.data[key]
        if value is not None and len(value) != 3:
            raise ConfigError(f"data.{key}={list(value)} must be three numbers (R, G, B), or null for the dataset's")
    if cfg.optim.name in ("adam", "adamw") and len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas={list(cfg.optim.betas)} must be two numbers [beta1, beta2], e.g. [0.9, 0.999]")


def img_size_schedule(value: Any) -> list[tuple[float, int]]:
    """data.img_size as [(fraction of training, size), ...]: an int is [(0, int)]."""
    fix = "give an int, or [[0, SIZE], [FRACTION, SIZE], ...] with fractions rising from 0 below 1"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    sizes = RANGES["data.img_size"]
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in sizes:
            raise ConfigError(f"data.img_size={value} {sizes.describe()} (pixels)")
        return [(0.0, value)]
    try:
        steps = [(float(f), int(s)) for f, s in value]
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"data.img_size={value!r} is not valid; {fix}") from None
    fractions = [f for f, _ in steps]
    if (
        not steps or fractions[0] != 0 or any(b <= a for a, b in zip(fractions, fractions[1:]))
        or fractions[-1] >= 1 or any(s not in sizes for _, s in steps)
    ):  # fmt: skip
        raise ConfigError(f"data.img_size={[list(s) for s in steps]} is not valid; {fix}")
    return steps


def micro_batch_cap(cfg: Any) -> Optional[int]:
    """The micro-batches an epoch may take: train.max_steps_per_epoch counts optimizer steps, as every step
    in the run dir does, so it allows grad_accum micro-batches per step (None: no cap)."""
    cap = cfg.train.max_steps_per_epoch
    return int(cap) * max(1, int(cfg.train.grad_accum)) if cap else None


def final_img_size(value: Any) -> int:
    """The size evaluation and anything that needs one size use: the schedule's last."""
    return img_size_schedule(value)[-1][1]


def _validate_aug(cfg: Any) -> None:
    a = cfg.aug
    scale, ratio = list(a.scale), list(a.ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:  # the ranges checked each value; this, their order
        raise ConfigError(f"aug.scale={scale} must be [min, max] with 0 < min <= max <= 1, e.g. [0.35, 1]")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(f"aug.ratio={ratio} must be [min, max] with 0 < min <= max, e.g. [0.75, 1.3333]")
    if a.hflip is not None and not 0.0 <= a.hflip <= 1.0:
        raise ConfigError(f"aug.hflip={a.hflip} must be a probability in [0, 1] (0 turns flips off)")


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg)


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_dict(values: dict) -> Any:
    """Rebuild a validated config from a saved dict (config.yaml, a checkpoint)."""
    cfg = _schema()
    OmegaConf.set_struct(cfg, True)
    _open_mappings(cfg)
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


def config_with_objects(config: Any, overrides: Iterable[str], objects: dict[str, Any]) -> Any:
    """The validated config: file (or dict), overrides, then the names of the objects handed over."""
    overrides = [str(o) for o in overrides]
    if isinstance(config, dict):
        overrides = [f"{k}={v}" for k, v in _flatten_sections(OmegaConf.to_container(OmegaConf.create(config)))] + overrides
        config = None
    named = [f"{key}={object_name(obj)}" for key, obj in objects.items() if obj is not None]
    return load_config(str(config) if config is not None else None, [*overrides, *named])


def _flatten_sections(values: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in values.items():
        if isinstance(value, dict) and prefix == "":
            out += _flatten_sections(value, f"{key}.")
        else:
            out.append((f"{prefix}{key}", json.dumps(value) if isinstance(value, (list, dict)) else value))
    return out
