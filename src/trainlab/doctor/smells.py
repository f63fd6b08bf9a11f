"""Configuration smells: settings that are legal but rarely what anyone wants. No training, no data."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from trainlab.doctor.patient import Patient
from trainlab.doctor.verdict import Verdict

# Usual weight decay, by how the optimizer applies it: (warning above, problem above)
COUPLED_WD = (2e-3, 1e-2)  # SGD, Adam, RMSprop...: L2 added to the gradient
DECOUPLED_WD = (0.3, 1.0)  # AdamW: decoupled, multiplied by the LR


def config_smells(p: Patient, model: nn.Module) -> Verdict:
    cfg = p.cfg
    problems: list[str] = []
    warnings: list[str] = []
    fixes: list[str] = []
    if cfg.model.freeze_backbone and not cfg.model.pretrained:
        problems.append("model.freeze_backbone=true without model.pretrained: the backbone stays at its random "
                        "initial weights and only the head learns")
        fixes.append("give model.pretrained=... or set model.freeze_backbone=false")
    for warning in p.schedule_warnings:
        warnings.append(warning)
    labels = int(p.data.num_classes)
    if p.num_classes > labels:  # a head wider than the labels: legal, but rarely meant (a wrong dataset, a copied config)
        warnings.append(f"model.num_classes={p.num_classes} but the dataset has {labels} classes (labels 0..{labels - 1}): "
                        f"{p.num_classes - labels} of the head's outputs match no label, the untrained loss is "
                        f"ln({p.num_classes}) = {math.log(p.num_classes):.2f} instead of ln({labels}) = "
                        f"{math.log(max(labels, 2)):.2f}, and top-k accuracies count outputs no sample can have")
        fixes.append(f"set model.num_classes={labels} (or leave it unset to use the dataset's count), or check "
                     f"that data.root is the dataset you meant")
    wd, name = float(cfg.optim.weight_decay), cfg.optim.name
    warn_at, bad_at = DECOUPLED_WD if name == "adamw" else COUPLED_WD
    if wd > bad_at:
        shrink = p.peak_lr * wd
        problems.append(f"optim.weight_decay={wd:g} is far above the usual range for {name} (<= {warn_at:g}): at "
                        f"lr {p.peak_lr:.3g} it shrinks every weight by {shrink:.1%} per step")
        fixes.append(f"use optim.weight_decay around {5e-4 if name != 'adamw' else 0.05:g}")
    elif wd > warn_at:
        warnings.append(f"optim.weight_decay={wd:g} is above the usual range for {name} (<= {warn_at:g})")
        fixes.append("check optim.weight_decay")
    ls = float(cfg.train.label_smoothing)
    if ls >= (p.num_classes - 1) / p.num_classes:
        problems.append(f"train.label_smoothing={ls:g} makes every target uniform over {p.num_classes} classes")
        fixes.append("use train.label_smoothing=0.1")
    elif ls > 0.3:
        warnings.append(f"train.label_smoothing={ls:g} is far above the usual 0.05..0.2")
        fixes.append("use train.label_smoothing=0.1")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and p.batch_size < 8:
        (problems if p.batch_size < 2 else warnings).append(
            f"data.batch_size={p.batch_size} per process is small for BatchNorm: its batch statistics are noisy"
            + (" (train.grad_accum does not help BatchNorm)" if cfg.train.grad_accum > 1 else ""))
        fixes.append("raise data.batch_size to 16 or more, or model.norm=none / model.sync_bn=true under DDP")
    lr = p.peak_lr
    if name in ("adam", "adamw") and lr >= 0.01:
        warnings.append(f"peak LR {lr:g} with {name} is high (usual 1e-4..3e-3)")
        fixes.append("see lr_range")
    figures: dict[str, Any] = {"problems": problems, "warnings": warnings, "head_outputs": p.num_classes,
                               "dataset_classes": labels}
    if not problems and not warnings:
        return Verdict("config_smells", "ok", "no smells: frozen layers, schedule, weight decay, label smoothing and "
                       "the BatchNorm batch size look usual", "", figures)
    status = "problem" if problems else "warning"
    return Verdict("config_smells", status, "; ".join(problems + warnings), "; ".join(dict.fromkeys(fixes)), figures)
