"""A search space from `--space` items, checked against the config schema before any trial starts.

    --space optim.lr=1e-5:1:log          a float between 1e-5 and 1, sampled on a log scale
    --space optim.weight_decay=0:1e-3    a float, uniform
    --space train.epochs=2:8:int         an integer (`:int:log` for a log-scaled one)
    --space optim.name=sgd,adamw         one of these values

Every key must be a config key that may be searched; both ends of a range and every choice are loaded
into the run's config (the file, the fixed overrides, the value) as `trainlab train` would load it, so a
bad key, type or value is one line (exit 2) naming the --space item, before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from trainlab.errors import TrainlabError, UsageError
from trainlab.sweep.plan import split_values

NOT_SEARCHABLE = ("run.", "train.callbacks", "train.nproc", "log.")  # where and how a run runs, not what it learns


@dataclass
class SearchKey:
    key: str
    kind: str  # float | int | choice
    spec: str  # as written after `key=`
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: list[Any] = field(default_factory=list)

    def distribution(self) -> Any:
        import optuna

        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution(self.choices)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def override(self, value: Any) -> str:
        return f"{self.key}={text(value)}"

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {{{', '.join(map(text, self.choices))}}}"
        scale = " (log)" if self.log else ""
        return f"{self.key} in [{text(self.low)}, {text(self.high)}]{' int' if self.kind == 'int' else ''}{scale}"


def text(value: Any) -> str:
    """A value as the override and the tables write it; floats round-trip exactly (repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _choice(raw: str) -> Any:
    """`16` -> 16, `true` -> True, `sgd` -> 'sgd': Optuna keeps the type, the config reads the same value."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (str, int, float, bool)) else raw


def _number(raw: str, item: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"--space '{item}': '{raw}' is not a number; write key=low:high[:log|:int] "
                         "or key=a,b,c") from None  # fmt: skip
    if not math.isfinite(value):
        raise UsageError(f"--space '{item}': the range needs finite ends")
    return value


def parse_item(item: str) -> SearchKey:
    key, sep, spec = item.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or "." not in key or not spec:
        raise UsageError(f"--space '{item}' is not section.key=low:high[:log|:int] or section.key=a,b,c "
                         "(e.g. --space optim.lr=1e-5:1:log)")  # fmt: skip
    if any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_SEARCHABLE):
        raise UsageError(f"--space '{item}': {key} says where or how a run runs, not what it learns; it cannot be "
                         "searched (set it as a fixed key=value)")  # fmt: skip
    values = split_values(spec)
    if len(values) > 1:
        if any(v == "" for v in values):
            raise UsageError(f"--space '{item}' has an empty choice; write key=a,b,c")
        choices = list(dict.fromkeys(_choice(v) for v in values))
        if len(choices) < 2:
            raise UsageError(f"--space '{item}' has one value; a search needs two or more (or a fixed key=value)")
        return SearchKey(key, "choice", spec, choices=choices)
    parts = [p.strip() for p in spec.split(":")]
    if len(parts) < 2:
        raise UsageError(f"--space '{item}': give a range low:high[:log|:int] or two or more choices a,b")
    flags = parts[2:]
    unknown = [f for f in flags if f not in ("log", "int")]
    if unknown:
        raise UsageError(f"--space '{item}': unknown '{unknown[0]}'; after low:high write :log, :int or :int:log")
    low, high = _number(parts[0], item), _number(parts[1], item)
    kind = "int" if "int" in flags else "float"
    if kind == "int":
        if low != int(low) or high != int(high):
            raise UsageError(f"--space '{item}': an :int range needs whole ends")
        low, high = int(low), int(high)
    if not low < high:
        raise UsageError(f"--space '{item}': low ({parts[0]}) must be below high ({parts[1]})")
    log = "log" in flags
    if log and low <= 0:
        raise UsageError(f"--space '{item}': a :log range needs low > 0")
    return SearchKey(key, kind, spec, low=low, high=high, log=log)


def parse_space(items: list[str]) -> list[SearchKey]:
    space: list[SearchKey] = []
    for item in items:
        found = parse_item(item)
        if any(k.key == found.key for k in space):
            raise UsageError(f"--space names '{found.key}' twice; give one range or one list of choices for it")
        space.append(found)
    return space


def validate_space(space: list[SearchKey], config: Optional[str], overrides: list[str]) -> None:
    """Load the run's config with each end of every range and every choice, as each trial will."""
    from omegaconf import OmegaConf

    from trainlab.config import load_config

    if not space:
        raise UsageError("--search optuna needs a search space: --space section.key=low:high[:log] (repeatable)")
    fixed = {o.split("=", 1)[0].strip(): o for o in overrides}
    for k in space:
        if k.key in fixed:
            raise UsageError(f"--space {k.key}={k.spec} and the fixed override {fixed[k.key]} set the same key; "
                             "drop one of them")  # fmt: skip
        probes = k.choices if k.kind == "choice" else [k.low, k.high]
        for value in probes:
            try:
                cfg = load_config(config, [*overrides, k.override(value)])
            except TrainlabError as exc:
                message = str(exc).replace("command line: ", "")
                raise UsageError(f"--space {k.key}={k.spec}: {message} (no trial was started)") from None
            loaded = OmegaConf.select(cfg, k.key)
            if k.kind == "float" and isinstance(loaded, int) and not isinstance(loaded, bool):
                raise UsageError(f"--space {k.key}={k.spec}: {k.key} is an integer key; write the range as "
                                 f"{k.spec.split(':')[0]}:{k.spec.split(':')[1]}:int")  # fmt: skip
