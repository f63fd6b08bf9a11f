"""Batch mixup / cutmix: batches match their definitions, soft targets sum to one, resumable randomness."""

from __future__ import annotations

import pytest
import torch

from trainlab.train.mix import BatchMixer, soft_target_accuracy

N, C, SIZE = 8, 10, 16


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, SIZE, SIZE, generator=g), torch.arange(N)  # distinct labels: pairs are readable


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "mixup, cutmix, smoothing", [(0.4, 0.0, 0.0), (0.0, 1.0, 0.0), (0.8, 1.0, 0.1), (0.0, 0.0, 0.2)]
)
def test_soft_targets_sum_to_one(mixup, cutmix, smoothing):
    mixer = BatchMixer(mixup, cutmix, 1.0, 0.5, C, label_smoothing=smoothing)
    x, y = batch()
    for seed in range(10):
        _, targets = mixer(x, y, gen(seed))
        assert targets.shape == (N, C) and (targets >= 0).all()
        torch.testing.assert_close(targets.sum(1), torch.ones(N))


def test_mixup_blends_each_image_with_its_partner_in_the_reversed_batch():
    mixer = BatchMixer(0.4, 0.0, 1.0, 0.5, C)
    x, y = batch()
    lam, use_cutmix, _ = mixer.draw(gen(3))
    mixed, targets = mixer(x, y, gen(3))
    assert not use_cutmix and 0.0 < lam < 1.0
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))
    for i in range(N):
        j = N - 1 - i
        expected = torch.zeros(C)
        expected[y[i]] += lam
        expected[y[j]] += 1 - lam
        torch.testing.assert_close(targets[i], expected)


def test_cutmix_pastes_one_box_from_the_reversed_batch_and_lambda_is_the_kept_area():
    mixer = BatchMixer(0.0, 1.0, 1.0, 0.5, C)
    x, y = batch()
    checked = 0
    for seed in range(20):
        mixed, targets = mixer(x, y, gen(seed))
        changed = (mixed != x).any(dim=1)  # N,H,W
        assert torch.equal(
            mixed[changed.unsqueeze(1).expand_as(mixed)], x.flip(0)[changed.unsqueeze(1).expand_as(x)]
        )
        area = changed[0]
        if not area.any():
            continue
        rows, cols = area.any(1).nonzero().squeeze(1), area.any(0).nonzero().squeeze(1)
        box = torch.zeros_like(area)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(area, box)  # a rectangle
        assert all(torch.equal(changed[i], area) for i in range(N) if i != N - 1 - i)  # same box for all
        kept = 1.0 - area.float().mean().item()
        assert targets[0, y[0]].item() == pytest.approx(kept)
        assert targets[0, y[N - 1]].item() == pytest.approx(1 - kept)
        checked += 1
    assert checked >= 15


def test_switch_prob_picks_cutmix_or_mixup():
    x, y = batch()
    always_cutmix = BatchMixer(0.5, 1.0, 1.0, 1.0, C)
    always_mixup = BatchMixer(0.5, 1.0, 1.0, 0.0, C)
    for seed in range(5):
        mixed, _ = always_cutmix(x, y, gen(seed))
        assert ((mixed == x) | (mixed == x.flip(0))).all()  # pasted pixels only, no blending
        assert always_mixup.draw(gen(seed))[1] is False


def test_disabled_or_unapplied_mixer_is_the_identity_with_smoothed_one_hot_targets():
    x, y = batch()
    off = BatchMixer(0.0, 0.0, 1.0, 0.5, C, label_smoothing=0.1)
    assert off.enabled is False
    never = BatchMixer(1.0, 1.0, 0.0, 0.5, C, label_smoothing=0.1)
    assert never.enabled is True
    for mixer in (off, never):
        out, targets = mixer(x, y, gen(0))
        assert torch.equal(out, x)
        expected = torch.full((N, C), 0.01)
        expected[torch.arange(N), y] = 0.91
        torch.testing.assert_close(targets, expected)


def test_mix_prob_is_respected_and_input_is_not_modified():
    mixer = BatchMixer(1.0, 0.0, 0.5, 0.5, C)
    x, y = batch()
    before = x.clone()
    applied = sum(not torch.equal(mixer(x, y, gen(s))[0], x) for s in range(200))
    assert 70 < applied < 130
    assert torch.equal(x, before)


def test_same_generator_state_gives_the_same_mix():
    mixer = BatchMixer(0.8, 1.0, 0.9, 0.5, C, label_smoothing=0.1)
    x, y = batch()
    for seed in range(5):
        a, ta = mixer(x, y, gen(seed))
        b, tb = mixer(x, y, gen(seed))
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert not torch.equal(mixer(x, y, gen(1))[1], mixer(x, y, gen(2))[1])


def test_soft_target_accuracy_uses_the_dominant_label():
    targets = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.0, 0.8], [0.6, 0.4, 0.0]])
    logits = torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.0, 1.0], [0.0, 5.0, 0.0]])
    assert soft_target_accuracy(logits, targets).item() == pytest.approx(1 / 3)
