"""What the model is fed: input statistics after normalisation, the label histogram, a grid of samples."""

from __future__ import annotations

from pathlib import Path

import torch

from trainlab.doctor.patient import Patient
from trainlab.doctor.verdict import Verdict

STATS_SAMPLES = 256
GRID_SAMPLES = 32


def _sample(p: Patient, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels, seen = [], [], 0
    for x, y in p.train_batches(10**6):
        images.append(x.float().cpu())
        labels.append(y.cpu())
        seen += len(y)
        if seen >= count:
            break
    return torch.cat(images)[:count], torch.cat(labels)[:count]


def input_stats(p: Patient) -> Verdict:
    images, _ = _sample(p, STATS_SAMPLES)
    per_channel = images.transpose(0, 1).reshape(images.shape[1], -1)
    means, stds = per_channel.mean(dim=1).tolist(), per_channel.std(dim=1).tolist()
    finite = bool(torch.isfinite(images).all())
    figures = {"samples": len(images), "mean": means, "std": stds, "min": float(images.min()),
               "max": float(images.max()), "finite": finite}
    desc = ", ".join(f"ch{i} mean {m:+.2f} std {s:.2f}" for i, (m, s) in enumerate(zip(means, stds)))
    seen = f"{len(images)} train images after normalisation: {desc}; range {figures['min']:.2f}..{figures['max']:.2f}"
    fix = ("set data.mean/data.std to the dataset's per-channel statistics in 0..1 units (the defaults do this for "
           "the built-in datasets; ImageNet's are [0.485, 0.456, 0.406] / [0.229, 0.224, 0.225])")
    if not finite:
        return Verdict("input_stats", "problem", seen + "; the batch holds NaN/Inf", "check the data files", figures)
    worst_mean = max(abs(m) for m in means)
    worst_std = max(max(s, 1 / max(s, 1e-12)) for s in stds)
    if worst_mean > 1.5 or worst_std > 4:
        hint = " (looks like raw 0..255 pixels)" if figures["max"] > 20 else ""
        return Verdict("input_stats", "problem", seen + f"; expected mean near 0, std near 1{hint}", fix, figures)
    if worst_mean > 0.5 or worst_std > 2:
        return Verdict("input_stats", "warning", seen + "; expected mean near 0, std near 1", fix, figures)
    return Verdict("input_stats", "ok", seen, "", figures)


def _train_labels(p: Patient) -> torch.Tensor:
    """Every train label when the loader holds them in memory, else those of the first batches."""
    loader = p.data.train
    loader = getattr(loader, "_inner", loader)  # a loader wrapped by a callback (tests/drills.py)
    if isinstance(getattr(loader, "_labels", None), torch.Tensor):
        return loader._labels.cpu()
    source = getattr(getattr(getattr(loader, "_loader", None), "dataset", None), "source", None)
    if source is not None and hasattr(source, "labels"):
        return torch.as_tensor(source.labels)
    return _sample(p, 1024)[1]


def label_histogram(p: Patient) -> Verdict:
    labels = _train_labels(p)
    counts = torch.bincount(labels, minlength=p.num_classes).tolist()
    names = list(p.data.class_names)
    figures = {"counts": dict(zip(names + [str(i) for i in range(len(names), len(counts))], counts)),
               "labels_seen": len(labels)}
    present = [c for c in counts[: p.data.num_classes] if c > 0]
    missing = [names[i] if i < len(names) else str(i) for i, c in enumerate(counts[: p.data.num_classes]) if c == 0]
    ratio = max(present) / min(present) if present else float("inf")
    figures["imbalance"] = ratio
    seen = (f"{len(labels)} train labels over {len(present)} of {p.data.num_classes} classes, "
            f"{min(present) if present else 0}..{max(present) if present else 0} per class ({ratio:.1f}x)")
    if int(labels.max()) >= p.num_classes or int(labels.min()) < 0:
        return Verdict("label_histogram", "problem", seen + f"; labels outside 0..{p.num_classes - 1}",
                       "labels must be 0..num_classes-1: check the dataset's label column or model.num_classes", figures)
    if missing:
        return Verdict("label_histogram", "warning", seen + f"; no samples of {', '.join(missing[:5])}",
                       "those classes can never be learned: check the split or the folder names", figures)
    if ratio > 10:
        return Verdict("label_histogram", "warning", seen, "a strong imbalance: the model may learn to predict the "
                       "common classes only; rebalance the data or weight the loss", figures)
    return Verdict("label_histogram", "ok", seen, "", figures)


def sample_grid(p: Patient, out_dir: Path) -> Verdict:
    """A grid PNG of augmented training samples with their labels: what the model sees."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels = _sample(p, GRID_SAMPLES)
    mean = torch.tensor(p.data.mean).view(1, -1, 1, 1)
    std = torch.tensor(p.data.std).view(1, -1, 1, 1)
    shown = (images * std + mean).clamp(0, 1)
    cols, size = 8, shown.shape[-1]
    rows = -(-len(shown) // cols)
    canvas = torch.ones(3, rows * (size + 2), cols * (size + 2))
    for i, img in enumerate(shown):  # one image, one axes: 32 subplots cost seconds in matplotlib
        r, c = divmod(i, cols)
        canvas[:, r * (size + 2) + 1: r * (size + 2) + 1 + size, c * (size + 2) + 1: c * (size + 2) + 1 + size] = img
    fig, ax = plt.subplots(figsize=(cols * 1.3, rows * 1.4))
    ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    names = list(p.data.class_names)
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(i, cols)
        text = f"{label}: {names[label] if label < len(names) else '?'}"[:16]
        ax.text(c * (size + 2) + 1, r * (size + 2) + 1, text, fontsize=6, color="yellow", va="top",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    ax.axis("off")
    fig.tight_layout()
    path = out_dir / "samples.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Verdict("sample_grid", "ok", f"{len(shown)} augmented training samples with their labels in {path.name}: "
                   "look at it (a mirrored digit, a label off by one, a wrong crop are obvious at a glance)", "",
                   {"path": str(path), "samples": len(shown)})
