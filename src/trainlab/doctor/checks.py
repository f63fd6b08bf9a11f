"""The checks that train: initial loss, one-batch overfit, LR range test, parameters and layers, label signal,
throughput.

Each returns Verdicts; sizes are kept small (a fixed batch of 16, a range test of 40 steps at batch 16, a label
probe of 60 steps at batch 32) so the whole doctor stays within a minute for the default config on two CPU cores.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from trainlab.doctor.patient import Patient
from trainlab.doctor.probe import Probe
from trainlab.doctor.verdict import Verdict

OVERFIT_SAMPLES = 16
OVERFIT_MAX_STEPS = 30
RANGE_STEPS = 40
RANGE_BATCH = 16
# A layer is flagged when this share of its channels never fires on the fixed batch (relu-like), or this share of
# its outputs sits at the function's bounds (sigmoid/tanh). High on purpose: right after init, zero-initialised
# residual branches and zero-padded shortcuts leave many channels at exactly zero in healthy CIFAR ResNets.
DEAD, SATURATED = 0.9, 0.9
SIGNAL_FIT = 128  # label_signal: fixed train samples the throwaway model is fitted on
SIGNAL_HELDOUT = 512  # ...and the disjoint train samples it is scored on
SIGNAL_BATCH = 32
SIGNAL_STEPS = 60
SIGNAL_Z = 3.0  # "clearly above chance": chance + this many binomial standard errors
SIGNAL_AT_CHANCE_Z = 1.5  # "at chance": held-out accuracy within this many standard errors of it (a problem)
SIGNAL_MIN_PER_CLASS = 8  # fewer fitted samples per class: nothing to generalise from, the check cannot conclude
FALL = 0.9  # the loss "starts to fall" where its smoothed value is 10% below its start
RANGE_BELOW = 3.0  # a peak within 3x below the suggested range is ok (said so), further below a warning
RANGE_ABOVE = 3.0  # ... and within 3x above its top; further above a warning (below the blow-up)


def _g(x: float) -> str:
    return f"{x:.3g}"


# ---------------------------------------------------------------- initial loss


def initial_loss(p: Patient, first: Probe) -> Verdict:
    expected = math.log(p.num_classes)
    ratio = first.loss / expected if expected > 0 else float("nan")
    figures = {"loss": first.loss, "ln_num_classes": expected, "ratio": ratio, "num_classes": p.num_classes,
               "dataset_classes": p.data.num_classes, "logit_std": first.logit_std,
               "top_class_share": first.top_class_share}
    seen = (f"loss {first.loss:.3f} at the initial weights vs ln({p.num_classes}) = {expected:.3f} "
            f"({ratio:.2f}x); logits std {first.logit_std:.2f}, {first.top_class_share:.0%} of the batch predicted "
            "as one class")
    if not math.isfinite(first.loss):
        return Verdict("initial_loss", "problem", seen, "the first forward pass is not finite: check the inputs for "
                       "NaN/Inf (see input_stats) and the model's initialisation", figures)
    if p.num_classes > p.data.num_classes:
        seen += f"; the head has {p.num_classes} outputs for {p.data.num_classes} dataset classes"
    fix = ("a loss far from ln(classes) at initialisation means confident outputs before any training: check "
           "the input normalisation (input_stats), that labels are 0..classes-1, the head's size "
           "(model.num_classes) and its initialisation")
    if 0.8 <= ratio <= 1.25:
        status = "warning" if p.num_classes > p.data.num_classes else "ok"
        fix = "drop model.num_classes to use the dataset's class count" if status == "warning" else ""
    elif 0.6 <= ratio <= 2.0:
        status = "warning"
    else:
        status = "problem"
    return Verdict("initial_loss", status, seen, fix, figures)


# ---------------------------------------------------------------- overfit one batch


def overfit_batch(p: Patient) -> tuple[Verdict, list[str], torch.nn.Module, tuple]:
    """Train on one fixed small batch at the configured peak LR. Returns the verdict, the trainable parameters
    that never changed, the trained model and the batch."""
    model = p.new_model()
    step = p.new_step(model)
    images, labels = step.inputs(*p.fixed_batch(OVERFIT_SAMPLES))
    before = {n: t.detach().clone() for n, t in model.named_parameters() if t.requires_grad}
    losses, accs, reached = [], [], None
    for k in range(1, OVERFIT_MAX_STEPS + 1):
        logits, loss = step.forward(images, labels)
        losses.append(float(loss.detach()))
        accs.append(float((logits.argmax(1) == labels).float().mean()))
        if not math.isfinite(losses[-1]):
            break
        if accs[-1] == 1.0 and losses[-1] < 0.5 * losses[0]:
            reached = k
            break
        step.backward(loss)
        step.optimizer_step()
    unchanged = [n for n, t in model.named_parameters() if n in before and torch.equal(t.detach(), before[n])]
    n = len(labels)
    figures = {"samples": n, "steps": len(losses), "max_steps": OVERFIT_MAX_STEPS, "lr": p.peak_lr,
               "start_loss": losses[0], "end_loss": losses[-1], "end_accuracy": accs[-1], "reached_at": reached}
    seen = (f"{n} fixed samples at lr {_g(p.peak_lr)}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, accuracy "
            f"{accs[-1]:.0%} after {len(losses)} steps")
    if reached is not None:
        return Verdict("overfit_batch", "ok", f"memorised {seen}", "", figures), unchanged, model, (images, labels)
    drop = 1.0 - losses[-1] / losses[0] if math.isfinite(losses[-1]) and losses[0] > 0 else -1.0
    figures["drop"] = drop
    if drop >= 0.3:  # learning, not yet memorised in the bounded number of steps
        return (Verdict("overfit_batch", "ok", f"learning: {seen} ({drop:.0%} lower; not memorised within "
                        f"{OVERFIT_MAX_STEPS} steps)", "", figures), unchanged, model, (images, labels))
    if not math.isfinite(losses[-1]) or losses[-1] > 1.5 * losses[0]:
        fix = (f"the loss blew up at lr {_g(p.peak_lr)}: lower optim.lr (see lr_range for where the loss falls), "
               "add warm-up (sched.warmup_epochs) or train.clip_grad")
        status = "problem"
    elif drop >= 0.1:
        fix = "it learns, but slowly: the LR may be low (see lr_range), or the model small for the task"
        status = "warning"
    else:
        fix = (f"the pipeline cannot fit even {n} samples: an LR far too low (peak {_g(p.peak_lr)}), frozen or "
               "disconnected parameters (see parameters), or a loss/label mismatch")
        status = "problem"
    return Verdict("overfit_batch", status, f"did not memorise {seen}", fix, figures), unchanged, model, (images, labels)


# ---------------------------------------------------------------- label signal


def label_signal(p: Patient, lr: Optional[float] = None, suspects: tuple[str, ...] = ()) -> Verdict:
    """Fit a throwaway copy of the model on a few fixed train batches, then score it on DISJOINT train samples
    with their train labels. Labels that belong to their images make the held-out samples predictable; labels
    detached from their images (a wrong label file, shuffled folders, a broken label mapping) can still be
    memorised on the fitted batches, but predict nothing on the others. The one-batch overfit cannot tell the two
    apart; validation can, but only once the run has spent its epochs. Both bars are binomial: "clearly above
    chance" is chance (the share of the most common train class) plus SIGNAL_Z standard errors of the held-out
    count (ok); "at chance" is within SIGNAL_AT_CHANCE_Z of it (a problem, when the fitted samples were learnt).
    In between, and when nothing was learnt or there are too few samples per class, the check says it cannot
    conclude (ok: a warning there would fire on healthy runs that start slowly).

    `lr`: the middle (geometric) of lr_range's suggested range (None: the configured peak; its top, measured on
    one fixed batch, is too fast for several). `suspects`: the checks already found a problem (BatchNorm in eval
    mode, an LR far off, 0..255 inputs...): each can keep held-out samples at chance too, so with any of them a
    held-out accuracy at chance is a warning that names them, not a problem blamed on the labels.
    A few dozen steps at the configured LR (one-cycle's peak, or a cautious adam LR) leave most datasets at chance
    on unseen samples even with right labels; at the suggested LR they move off it."""
    from trainlab.doctor.inputs import _train_labels

    images, labels = p.fixed_batch(SIGNAL_FIT + SIGNAL_HELDOUT)  # one epoch's first samples: no repeats
    fit_n = min(SIGNAL_FIT, len(labels) // 2)
    fit_x, fit_y, held_x, held_y = images[:fit_n], labels[:fit_n], images[fit_n:], labels[fit_n:]
    held_n = len(held_y)
    counts = torch.bincount(_train_labels(p), minlength=p.num_classes)
    chance = float(counts.max()) / float(counts.sum())
    classes = int((counts > 0).sum())

    def bar(n: int, z: float = SIGNAL_Z) -> float:  # chance + z binomial standard errors of n samples
        return chance + z * math.sqrt(chance * (1 - chance) / max(n, 1))

    held_bar, fit_bar, at_chance = bar(held_n), bar(fit_n), bar(held_n, SIGNAL_AT_CHANCE_Z)
    lr = p.peak_lr if lr is None else lr
    model = p.new_model()
    # a frozen RANDOM backbone (config_smells' finding) leaves only the head to learn from features that carry
    # nothing: the held-out samples would stay at chance with right labels. The question here is the labels', so
    # the throwaway copy trains everything then (a pretrained frozen backbone stays frozen: its features count)
    unfrozen = bool(p.cfg.model.freeze_backbone and not p.cfg.model.pretrained)
    if unfrozen:
        for t in model.parameters():
            t.requires_grad_(True)
    step = p.new_step(model, lr=lr)
    batch = min(SIGNAL_BATCH, fit_n)
    order = torch.Generator().manual_seed(int(p.cfg.train.seed))
    steps, losses = 0, []
    while steps < SIGNAL_STEPS:
        perm = torch.randperm(fit_n, generator=order).to(fit_x.device)
        for start in range(0, fit_n - batch + 1, batch):
            idx = perm[start:start + batch]
            _, loss = step.forward(*step.inputs(fit_x[idx], fit_y[idx]))
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
            step.backward(loss)
            step.optimizer_step()
            steps += 1
            if steps >= SIGNAL_STEPS:
                break
        if not math.isfinite(losses[-1]):
            break
    fit_acc, fit_loss = _score(p, model, fit_x, fit_y, batch)
    held_acc, held_loss = _score(p, model, held_x, held_y, batch)
    figures = {"fitted_samples": fit_n, "heldout_samples": held_n, "steps": steps, "batch": batch, "lr": lr,
               "classes": classes, "chance": chance, "above_chance": held_bar, "at_chance_below": at_chance,
               "fitted_above_chance": fit_bar,
               "fitted_accuracy": fit_acc, "fitted_loss": fit_loss, "heldout_accuracy": held_acc,
               "heldout_loss": held_loss, "train_loss_start": losses[0] if losses else None,
               "train_loss_end": losses[-1] if losses else None, "unfrozen": unfrozen}
    seen = (f"{steps} steps on {fit_n} fixed train samples at lr {_g(lr)}: fitted accuracy {fit_acc:.0%} "
            f"(loss {fit_loss:.3f}), {held_n} held-out train samples {held_acc:.0%} (loss {held_loss:.3f}); chance "
            f"{chance:.0%}, clearly above it from {held_bar:.0%} (chance + {SIGNAL_Z:g} standard errors)"
            + ("; the frozen random backbone was trained too" if unfrozen else ""))
    if held_acc > held_bar:
        return Verdict("label_signal", "ok", f"the train labels are predictable from their images: {seen}", "",
                       figures)
    per_class = fit_n / max(classes, 1)
    figures["fitted_per_class"] = per_class
    detached = fit_acc > fit_bar and per_class >= SIGNAL_MIN_PER_CLASS and held_acc <= at_chance
    if detached and suspects:
        figures["suspects"] = list(suspects)
        return Verdict("label_signal", "warning", f"the held-out samples stay at chance, but {', '.join(suspects)} "
                       f"found problems that can do that too: {seen}", f"fix {', '.join(suspects)} first and run the "
                       "doctor again; if this stays, check the label files, the class folders and the dataset's label "
                       "mapping", figures)
    if detached:
        return Verdict("label_signal", "problem", f"labels look detached from their images: the model fits the "
                       f"fixed samples but learns nothing that carries over: {seen}",
                       "check the label files, the class folders and the dataset's label mapping (which label goes "
                       "with which image); look at samples.png", figures)
    if per_class < SIGNAL_MIN_PER_CLASS:
        why = f"{per_class:.1f} fitted samples per class are too few to generalise from"
    elif losses and not math.isfinite(losses[-1]):
        why = f"the loss went non-finite at step {len(losses)} at lr {_g(lr)}"
    elif fit_acc <= fit_bar:
        why = "the fitted samples were not learnt either in this budget"
    else:  # between "at chance" and "clearly above": a weak signal, or a slow start; neither is evidence
        why = (f"held-out accuracy between chance and clearly above it; at chance would be at most {at_chance:.0%} "
               f"(chance + {SIGNAL_AT_CHANCE_Z:g} standard errors)")
    return Verdict("label_signal", "ok", f"inconclusive ({why}): {seen}", "", figures)


@torch.no_grad()
def _score(p: Patient, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
           batch: int) -> tuple[float, float]:
    """Accuracy and mean loss, in train mode (batch statistics: a few steps leave BatchNorm's running stats
    behind the weights) without a gradient."""
    hits, total = 0, 0.0
    for x, y in zip(images.tensor_split(-(-len(labels) // batch)), labels.tensor_split(-(-len(labels) // batch))):
        logits = model(x)  # near-equal chunks: no last batch of one for BatchNorm
        hits += int((logits.argmax(1) == y).sum())
        total += float(torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
    return hits / len(labels), total / len(labels)


# ---------------------------------------------------------------- parameters and layers


def parameters(first: Probe, unchanged: Optional[list[str]]) -> Verdict:
    """`unchanged`: trainable parameters that never changed while training (None: no training was done)."""
    changes = unchanged is not None
    unchanged = unchanged or []
    figures = {"no_grad": first.no_grad[:20], "never_changed": unchanged[:20], "frozen_tensors": first.frozen,
               "no_grad_count": len(first.no_grad), "never_changed_count": len(unchanged)}
    parts = []
    if first.no_grad:
        parts.append(f"{len(first.no_grad)} trainable parameter tensor(s) got no gradient ({', '.join(first.no_grad[:3])}"
                     f"{'...' if len(first.no_grad) > 3 else ''})")
    if unchanged:
        parts.append(f"{len(unchanged)} never changed during overfit_batch ({', '.join(unchanged[:3])}"
                     f"{'...' if len(unchanged) > 3 else ''})")
    frozen = f"{first.frozen} frozen tensor(s)" if first.frozen else "none frozen"
    if not parts:
        return Verdict("parameters", "ok", f"every trainable parameter gets a gradient{' and changes' if changes else ''}; {frozen}", "",
                       figures)
    return Verdict("parameters", "problem", "; ".join(parts) + f"; {frozen}",
                   "those weights are disconnected from the loss (an unused layer, a detach(), a branch never "
                   "called) or not in the optimizer; remove them or fix the forward", figures)


def layers(first: Probe, after: Probe) -> list[Verdict]:
    out = []
    worst = []
    # judged after training only: at init, zero-initialised residual BatchNorm legitimately leaves whole channels
    # at exactly zero (a padded shortcut plus a zero branch) until the first updates
    for when, pr in (("after overfit_batch", after),):
        for layer in pr.layers:
            if layer.dead_frac >= DEAD or layer.saturated_frac >= SATURATED:
                worst.append((when, layer))
    figures = {"layers": len(after.layers), "flagged": [
        {"when": w, "layer": x.name, "kind": x.kind, "dead_frac": x.dead_frac, "saturated_frac": x.saturated_frac}
        for w, x in worst[:20]]}
    if not after.layers:
        out.append(Verdict("activations", "skipped", "no activation function calls seen (relu, gelu, sigmoid, tanh...)",
                           "", figures))
    elif worst:
        when, x = max(worst, key=lambda wx: max(wx[1].dead_frac, wx[1].saturated_frac))
        what = f"{x.dead_frac:.0%} of its {x.channels} channels dead" if x.kind == "relu" else \
            f"{x.saturated_frac:.0%} of its outputs saturated"
        out.append(Verdict("activations", "warning",
                           f"{len(worst)} activation layer(s) dead or saturated; worst {x.name} ({x.kind}) {when}: {what}",
                           "dead ReLUs follow an LR too high or a bad init; saturation follows large inputs: lower "
                           "optim.lr, check input_stats, keep normalisation layers", figures))
    else:
        out.append(Verdict("activations", "ok", f"{len(after.layers)} activation layers, none dead (>={DEAD:.0%} of "
                           f"channels) or saturated (>={SATURATED:.0%}) after overfit_batch", "", figures))
    bn = sorted(set(first.bn_eval_in_train) | set(after.bn_eval_in_train))
    if bn:
        out.append(Verdict("batchnorm_mode", "problem",
                           f"{len(bn)} BatchNorm layer(s) ran in eval mode during a training forward ({', '.join(bn[:3])}"
                           f"{'...' if len(bn) > 3 else ''}): they normalise with frozen running stats and never update them",
                           "something calls .eval() (or sets .training=False) on them during training; call model.train() "
                           "before each epoch and don't freeze BatchNorm unless fine-tuning on purpose",
                           {"layers": bn[:20], "count": len(bn)}))
    return out


# ---------------------------------------------------------------- LR range test


def lr_range(p: Patient, out_dir: Optional[Path]) -> Verdict:
    """Exponentially increasing LR over RANGE_STEPS steps on one fixed batch, loss recorded.

    On a fixed batch the loss answers within a few steps once the LR is large enough to move the weights, which a
    pre-flight can afford; on fresh batches many datasets (the shapes set among them) need hundreds of steps
    before the loss moves at any LR. So this places the LR against the optimizer's response, not against how
    fast the model generalises (that is the watch's job during the run)."""
    peak = p.peak_lr
    adaptive = p.cfg.optim.name in ("adam", "adamw", "rmsprop")
    lo, hi = (1e-5, 1.0) if adaptive else (1e-4, 10.0)
    hi = max(hi, peak * 30)  # the low end stays: a peak below it is placed by how far below the fall it is
    model = p.new_model()
    step = p.new_step(model, lr=lo)
    opt = step.optimizer
    images, labels = step.inputs(*p.fixed_batch(RANGE_BATCH))
    batch = len(labels)
    factor = (hi / lo) ** (1.0 / (RANGE_STEPS - 1))
    lrs, raw, smooth = [], [], []
    avg, beta = 0.0, 0.5
    for k in range(RANGE_STEPS):
        lr = lo * factor**k
        for group in opt.param_groups:
            group["lr"] = lr
        _, loss = step.forward(images, labels)
        value = float(loss.detach())
        lrs.append(lr)
        raw.append(value)
        if not math.isfinite(value):
            smooth.append(float("inf"))
            break
        avg = beta * avg + (1 - beta) * value
        smooth.append(avg / (1 - beta ** len(raw)))
        # stop once clearly diverged: nothing more to learn above this LR
        if len(smooth) > 4 and smooth[-1] > 2 * min(smooth) and smooth[-1] > 1.5 * smooth[0]:
            break
        step.backward(loss)
        step.optimizer_step()
    start_loss = float(sorted(raw[:3])[len(raw[:3]) // 2])
    best = min(range(len(smooth)), key=lambda i: smooth[i])
    fall = next((i for i, s in enumerate(smooth) if s <= FALL * start_loss), None)
    blowup = next((i for i in range(best, len(smooth)) if smooth[i] > 2 * smooth[best] and smooth[i] > FALL * start_loss
                   or not math.isfinite(smooth[i])), None)
    figures: dict[str, Any] = {"lr_min": lo, "lr_max": lrs[-1], "steps": len(raw), "batch": batch, "peak_lr": peak,
                               "start_loss": start_loss, "min_loss": smooth[best], "lr_at_min_loss": lrs[best],
                               "lr_falls": lrs[fall] if fall is not None else None,
                               "lr_blows_up": lrs[blowup] if blowup is not None else None,
                               "curve": {"lr": lrs, "loss": raw}}
    if out_dir is not None:
        _plot_range(out_dir / "lr_range.png", lrs, raw, smooth, peak)
    if fall is None:
        return Verdict("lr_range", "problem",
                       f"the loss never fell below {FALL * start_loss:.3f} ({FALL:.0%} of its start {start_loss:.3f}) at any LR "
                       f"from {_g(lo)} to {_g(lrs[-1])} ({len(raw)} steps on {batch} fixed samples)",
                       "nothing fits even one batch at any LR: look for frozen or disconnected parameters "
                       "(parameters), a loss that ignores the model's output, and the weight decay", figures)
    fall_lr = lrs[fall]
    top = lrs[best] if blowup is None else min(lrs[best], lrs[blowup] / 3)
    suggested = (fall_lr, max(top, fall_lr))
    figures["suggested"] = list(suggested)
    where = (f"the loss starts to fall at lr {_g(fall_lr)}, is lowest at {_g(lrs[best])}"
             + (f" and blows up at {_g(lrs[blowup])}" if blowup is not None else f" (no blow-up up to {_g(lrs[-1])})")
             + f"; suggested range {_g(suggested[0])}..{_g(suggested[1])}")
    figures["placement"] = placement = _placement(peak, suggested, lrs[blowup] if blowup is not None else None)
    max_lr = ", sched.max_lr" if p.cfg.sched.name == "onecycle" else ""
    if blowup is not None and peak >= lrs[blowup]:
        return Verdict("lr_range", "problem", f"your peak LR {_g(peak)} is above where the loss blows up: {where}",
                       f"set the peak LR (optim.lr{max_lr}) to about {_g(suggested[1])}", figures)
    if peak < fall_lr / 10:
        return Verdict("lr_range", "problem", f"your peak LR {_g(peak)} is {fall_lr / peak:.0f}x below where the loss "
                       f"starts to fall: {where}", f"raise the peak LR to at least {_g(suggested[0])} (optim.lr"
                       f"{', or sched.max_lr' if max_lr else ''})", figures)
    if peak < fall_lr / 3:
        return Verdict("lr_range", "warning", f"your peak LR {_g(peak)} is {fall_lr / peak:.0f}x below where the loss "
                       f"starts to fall: {where}", f"try a peak LR of at least {_g(suggested[0])}", figures)
    if peak > RANGE_ABOVE * suggested[1]:
        risk = (f"{lrs[blowup] / peak:.1f}x below where it blows up" if blowup is not None
                else "the test found no blow-up")
        return Verdict("lr_range", "warning", f"your peak LR {_g(peak)} is {placement}, {risk}: {where}",
                       f"above the range the fixed batch's loss had stopped improving: a peak this high risks loss "
                       f"spikes or divergence in the first epochs (more so without warm-up). If the run spikes or "
                       f"stalls, lower the peak LR (optim.lr{max_lr}) toward {_g(suggested[1])} or add warm-up "
                       f"(sched.warmup_epochs)", figures)
    return Verdict("lr_range", "ok", f"your peak LR {_g(peak)} is {placement}: {where}", "", figures)


def _placement(peak: float, suggested: tuple[float, float], blowup: Optional[float]) -> str:
    """Where the peak sits on the suggested range, in words that agree with the figures."""
    low, high = suggested
    if peak < low:
        return f"{low / peak:.1f}x below the suggested range (close enough: within {RANGE_BELOW:g}x of it)"
    if peak <= high:
        return "inside the suggested range"
    if peak <= RANGE_ABOVE * high:
        return f"{peak / high:.1f}x above the suggested range's top (close enough: within {RANGE_ABOVE:g}x of it)"
    return f"{peak / high:.0f}x above the suggested range's top"


def _plot_range(path: Path, lrs: list, raw: list, smooth: list, peak: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    finite = [(lr, r, s) for lr, r, s in zip(lrs, raw, smooth) if math.isfinite(r) and math.isfinite(s)]
    if finite:
        ax.plot([f[0] for f in finite], [f[1] for f in finite], ".", alpha=0.4, label="loss")
        ax.plot([f[0] for f in finite], [f[2] for f in finite], "-", label="smoothed")
    ax.axvline(peak, color="red", linestyle="--", label=f"your peak LR {peak:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("train loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------- throughput, ETA, memory


def throughput(p: Patient) -> Verdict:
    import psutil

    step = p.new_step(p.new_model())  # the run's own step: its precision, memory format and loss
    timed_steps, waits, computes = 2, [], []
    batches = p.data.train.batches(1)
    for i in range(timed_steps + 1):  # the first step warms up allocators and kernels: not timed
        t0 = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:
            break
        t1 = time.perf_counter()
        step(images, labels)
        if p.device.type == "cuda":
            torch.cuda.synchronize(p.device)
        t2 = time.perf_counter()
        if i:
            waits.append(t1 - t0)
            computes.append(t2 - t1)
    n = max(len(waits), 1)
    wait, compute = sum(waits) / n, sum(computes) / n
    step_s = wait + compute
    micro = p.total_steps * int(p.cfg.train.grad_accum)
    eta_s = micro * step_s
    figures: dict[str, Any] = {"batch": p.batch_size, "step_s": step_s, "data_wait_s": wait, "compute_s": compute,
                               "images_per_s": p.batch_size / step_s if step_s else None, "micro_batches": micro,
                               "eta_train_s": eta_s}
    mem = psutil.virtual_memory()
    rss = psutil.Process().memory_info().rss
    figures.update(rss_mb=rss / 2**20, available_mb=mem.available / 2**20)
    headroom = f"host memory: {rss / 2**20:,.0f} MB used by this process, {mem.available / 2**20:,.0f} MB available"
    if p.device.type == "cuda":
        peak, total = torch.cuda.max_memory_allocated(p.device), torch.cuda.get_device_properties(p.device).total_memory
        figures.update(gpu_peak_mb=peak / 2**20, gpu_total_mb=total / 2**20)
        headroom += f"; device: peak {peak / 2**20:,.0f} of {total / 2**20:,.0f} MB"
    share = wait / step_s if step_s else 0.0
    seen = (f"{figures['images_per_s']:.0f} images/s at batch {p.batch_size} ({step_s * 1000:.0f} ms/step, "
            f"{share:.0%} waiting for data); the run's {micro} batches take ~{_duration(eta_s)} of training "
            f"(validation not included); {headroom}")
    if p.device.type == "cuda" and figures["gpu_peak_mb"] > 0.9 * figures["gpu_total_mb"]:
        return Verdict("throughput", "warning", seen, "under 10% device memory headroom: a longer input or a "
                       "fragmented allocator may run out; lower data.batch_size", figures)
    if share > 0.3:
        return Verdict("throughput", "warning", seen, "the loader is the bottleneck: more data.num_workers, "
                       "data.loader=tensor for in-memory data, or a cheaper aug.policy", figures)
    return Verdict("throughput", "ok", seen, "", figures)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
