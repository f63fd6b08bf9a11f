"""Mixup and CutMix on whole batches, on the device, with the semantics of timm's `Mixup` (batch mode).

With probability `mix_prob` a batch is mixed with itself reversed (`x.flip(0)`): mixup blends whole images
with lambda ~ Beta(mixup_alpha, mixup_alpha); cutmix pastes a box of the reversed batch whose side is
sqrt(1 - lambda) of the image, clipped at the borders, and lambda is then corrected to the area actually kept.
When both alphas are set, cutmix is chosen with probability `switch_prob`. Targets are soft (N x C), with
label smoothing folded in, and sum to one.

All randomness comes from the CPU generator the caller passes (one per batch position), so a resumed
run mixes exactly as the uninterrupted one did.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class BatchMixer:
    def __init__(
        self,
        mixup_alpha: float,
        cutmix_alpha: float,
        mix_prob: float,
        switch_prob: float,
        num_classes: int,
        label_smoothing: float = 0.0,
    ):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if not 0.0 <= mix_prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"mix_prob and switch_prob must be in [0, 1], got {mix_prob}, {switch_prob}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.mix_prob = float(mix_prob)
        self.switch_prob = float(switch_prob)
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.enabled = self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def draw(self, generator: torch.Generator) -> tuple[float, bool, float]:
        """(lambda, use_cutmix, box uniform seed) for one batch; lambda 1.0 means "leave the batch alone"."""
        # Beta draws need numpy; its stream is seeded from the caller's generator, so all stays reproducible.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        if not self.enabled or rng.random() >= self.mix_prob:
            return 1.0, False, 0.0
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix, float(rng.random())

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        lam, use_cutmix, box_seed = self.draw(generator)
        if lam < 1.0:
            if use_cutmix:
                (y0, y1, x0, x1), lam = cutmix_box(x.shape[-2], x.shape[-1], lam, box_seed)
                x = x.clone()
                x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            else:
                x = x.mul(lam).add_(x.flip(0), alpha=1.0 - lam)
        return x, self.targets(y, lam)

    def targets(self, y: torch.Tensor, lam: float) -> torch.Tensor:
        """lam * smoothed_one_hot(y) + (1 - lam) * smoothed_one_hot(y reversed)."""
        off = self.label_smoothing / self.num_classes
        on = 1.0 - self.label_smoothing + off
        one_hot = torch.full((len(y), self.num_classes), off, dtype=torch.float32, device=y.device)
        one_hot.scatter_(1, y.view(-1, 1), on)
        if lam >= 1.0:
            return one_hot
        return one_hot.mul(lam).add_(one_hot.flip(0), alpha=1.0 - lam)


def cutmix_box(
    height: int, width: int, lam: float, uniform: float
) -> tuple[tuple[int, int, int, int], float]:
    """timm's rand_bbox + area correction: ((y0, y1, x0, x1), lambda kept).

    The box centre is uniform over the image (from one uniform number, so a draw is a single float); the
    box is clipped at the borders, so the area actually pasted decides lambda.
    """
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cell = min(int(uniform * height * width), height * width - 1)
    cy, cx = divmod(cell, width)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    kept = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    return (y0, y1, x0, x1), kept


def soft_target_accuracy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Fraction (0-1, a 0-dim device tensor) of top-1 predictions equal to each target's dominant label."""
    return (logits.argmax(dim=1) == soft_targets.argmax(dim=1)).float().mean()
