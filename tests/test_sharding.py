"""Every loader kind under a change of process count (issue 26 item 1): rank r of N takes positions r::N of
the epoch's sequence, so at step k the N ranks' batches of B hold exactly the samples, with the same pixels,
that one process's batch of N x B holds, and a run stopped on 2 processes continues on 1 (or the reverse)
without missing or repeating a sample. The set sizes are uneven (101) so DistributedSampler's padding, and
anything drawn for the padded length, shows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainlab.data import ArraySource
from trainlab.data.augment import AugPlan
from trainlab.data.packed import VariableImages
from trainlab.data.stream import StreamLoader
from trainlab.data.tensor_loader import TensorLoader
from trainlab.data.torch_loader import TorchLoader
from trainlab.data.transforms import build_train_transform

CPU = torch.device("cpu")
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
N, SIZE, SEED, EPOCH = 101, 12, 5, 3
PAD = AugPlan("pad", SIZE, 0.5, pad=2)
RESIZED = AugPlan("resized", 10, 0.5, scale=(0.3, 1.0))

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)


def variable_images(n: int = N) -> VariableImages:
    rng = np.random.default_rng(1)
    sizes = [(int(h), int(w)) for h, w in rng.integers(10, 16, (n, 2))]
    pixels = np.concatenate([rng.integers(0, 256, h * w * 3, dtype=np.uint8) for h, w in sizes])
    offsets = np.cumsum([0] + [h * w * 3 for h, w in sizes[:-1]])
    return VariableImages(pixels, np.array([(o, h, w) for o, (h, w) in zip(offsets, sizes)], dtype=np.int64))


def tensor_kind(images, plan):
    def make(rank, world, bs):
        return TensorLoader(torch.from_numpy(images), torch.arange(N), bs, CPU, True, SEED, **IDENTITY,
                            rank=rank, world_size=world, plan=plan)  # fmt: skip

    return make, lambda ld: ld.epoch_params(EPOCH)[0]


def stream_kind(images, plan):
    def make(rank, world, bs):
        return StreamLoader(images, np.arange(N), bs, CPU, True, SEED, **IDENTITY, plan=plan, rank=rank,
                            world_size=world, block_bytes=SIZE * SIZE * 3 * 7, window_blocks=3)  # fmt: skip

    return make, lambda ld: ld.indices(EPOCH)


def torch_kind(images, plan):
    source = ArraySource(images, np.arange(N))
    transform = build_train_transform("small", plan.size, "flip-crop", 0.0, **IDENTITY, crop_pad=plan.pad, plan=plan)

    def make(rank, world, bs):
        return TorchLoader(source, transform, bs, True, SEED, rank=rank, world_size=world)

    return make, lambda ld: ld.indices(EPOCH)


def gpu_decode_kind(tmp_path, plan):
    from tests.test_gpu_decode import cfg_for, jpeg_folder
    from trainlab.data import load_raw
    from trainlab.data.gpu_decode import GpuJpegLoader

    raw = load_raw(cfg_for(jpeg_folder(tmp_path / "jpeg", per_class=9)))  # 18 files: uneven over 4 ranks

    def make(rank, world, bs):
        return GpuJpegLoader(raw.train, bs, CPU, True, SEED, **IDENTITY, plan=plan, rank=rank, world_size=world)

    return make, lambda ld: ld.order.indices(EPOCH)


def samples_by_step(make, ids_of, world: int, bs: int, lanes_from=None) -> list[dict[int, torch.Tensor]]:
    """Step k -> {sample id: its image} over all `world` ranks' batch k (each rank of batch size `bs`).
    `lanes_from`: a loader whose state_dict the new ones load, as a resumed run's do."""
    steps: list[dict[int, torch.Tensor]] = []
    for rank in range(world):
        ld = make(rank, world, bs)
        if lanes_from is not None:
            ld.load_state_dict(lanes_from.state_dict())
        ids = ids_of(ld).tolist()
        for k, (x, _) in enumerate(ld.batches(EPOCH)):
            if len(steps) <= k:
                steps.append({})
            for i, image in zip(ids[k * bs : (k + 1) * bs], x):
                steps[k].setdefault(i, image)
    return steps


def assert_same_steps(one: list[dict], many: list[dict], exact_tail: bool) -> None:
    assert len(one) == len(many), (len(one), len(many))
    for k, (a, b) in enumerate(zip(one, many)):
        last = k == len(one) - 1
        if last and not exact_tail:  # only padding may differ: a repeat of the epoch's head on more ranks
            assert set(a) <= set(b), k
        else:
            assert set(a) == set(b), f"step {k}: {len(set(a) - set(b))} samples only on 1 process"
        for i in set(a) & set(b):
            # allclose: a padded batch of variable-size images resamples with its own maxima (float rounding)
            assert torch.allclose(a[i], b[i], atol=1e-5), f"step {k}: sample {i} augmented differently"


@pytest.mark.parametrize("kind", ["tensor", "tensor-resized", "stream", "stream-variable", "torch", "gpu-decode"])
def test_a_step_holds_the_same_samples_on_any_process_count(kind, images, tmp_path):
    plan = RESIZED if kind in ("tensor-resized", "stream-variable") else PAD
    data = variable_images() if kind == "stream-variable" else images
    make, ids_of = {
        "tensor": tensor_kind, "tensor-resized": tensor_kind, "stream": stream_kind, "stream-variable": stream_kind,
        "torch": torch_kind, "gpu-decode": lambda _, p: gpu_decode_kind(tmp_path, p),
    }[kind](data, plan)  # fmt: skip
    bs = 2 if kind == "gpu-decode" else 8
    stream = kind.startswith("stream")
    # 2 x bs resumed as 1 x 2bs: the one process continues the 2-process order (the stream loader's lanes)
    two = samples_by_step(make, ids_of, 2, bs)
    one = samples_by_step(make, ids_of, 1, 2 * bs, lanes_from=make(0, 2, bs) if stream else None)
    assert_same_steps(one, two, exact_tail=stream)
    # 1 x 2bs resumed as 2 x bs, and 4 x bs/2
    one = samples_by_step(make, ids_of, 1, 2 * bs)
    for world in (2, 4):
        lanes = make(0, 1, 2 * bs) if stream else None
        many = samples_by_step(make, ids_of, world, 2 * bs // world, lanes_from=lanes)
        assert_same_steps(one, many, exact_tail=False)
    # and every sample of the epoch is seen, each once but for the padding (one position on 2 ranks)
    seen = [i for step in two for i in step]
    assert set(seen) == set(range(len(ids_of(make(0, 1, bs))))) and len(seen) - len(set(seen)) <= 1
