"""Loaders: batches of a dataset split, normalized, in channels_last (or contiguous, for a model that
needs it: core.memory_format), on a device.

Two augmentation backends draw from the same distribution (cnnscope.core.augment):

- "batch" (the default): whole batches augmented in-process on the uint8 tensor (on the GPU when
  training there), per-sample randomness from a torch.Generator, no worker processes;
- "albumentations": the seeds' pipeline, per-sample albumentations in DataLoader workers.

Batch order and augmentation randomness are a pure function of (seed, epoch, rank), so a resumed
run replays its batches exactly.
"""
import math
import os

import numpy as np
import torch

from cnnscope.core.augment import AugmentSpec, BatchAugment, autoaugment, check_fits
from cnnscope.core.memory_format import channels_last_refusal
from cnnscope.core.probe import rgb_pixels
from cnnscope.errors import CnnscopeError
from cnnscope.runs.datasets import Dataset, Split

BACKENDS = ("batch", "albumentations")
PROBE_IMAGES = 4  # the batch on which the memory-format check runs a model both ways


class AlbumentationsDataset(torch.utils.data.Dataset):
    """The seeds' per-sample pipeline over a uint8 split: returns (uint8 (C, H, W) tensor, label).

    Seeded per DataLoader worker by `_seed_worker` so that an epoch is a pure function of its seeds.
    """

    def __init__(self, split: Split, spec: AugmentSpec, mean):
        # albumentations checks PyPI for a newer version on import: up to 2 s offline, and a
        # training tool should not phone home
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A
        import cv2

        self.split = split  # read per sample (Split.take): a cached tree stays on disk
        self.labels = split.labels
        self.spec = spec
        _, height, width = split.input_shape
        before, after = [], []  # AutoAugment (torchvision) runs between the two, as in BatchAugment
        if spec.crop_pad:
            before += [A.PadIfNeeded(height + 2 * spec.crop_pad, width + 2 * spec.crop_pad,
                                     border_mode=cv2.BORDER_CONSTANT, fill=0),
                       A.RandomCrop(height, width)]
        if spec.hflip:
            before.append(A.HorizontalFlip(p=spec.hflip))
        if spec.affine_p:
            after.append(A.Affine(translate_percent={"x": (-spec.translate, spec.translate),
                                                     "y": (-spec.translate, spec.translate)},
                                  scale=tuple(spec.scale), rotate=(-spec.rotate, spec.rotate), keep_ratio=True,
                                  interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, fill=0,
                                  p=spec.affine_p))
        if spec.cutout and spec.cutout_p:
            fill = tuple(round(m * 255) for m in mean) if spec.cutout_fill == "mean" else 0
            after.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(spec.cutout, spec.cutout),
                                         hole_width_range=(spec.cutout, spec.cutout), fill=fill, p=spec.cutout_p))
        self.before, self.after = A.Compose(before), A.Compose(after)
        self.rng = np.random.default_rng(0)

    def seed(self, seed: int):
        self.before.set_random_seed(seed)
        self.after.set_random_seed(seed + 1)
        self.rng = np.random.default_rng(seed + 2)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        hwc = np.ascontiguousarray(self.split.take(torch.tensor([i]))[0].permute(1, 2, 0).numpy())
        img = self.before(image=hwc)["image"]
        if self.spec.autoaugment:
            chw = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
            img = autoaugment(chw.unsqueeze(0), int(self.rng.integers(2**62)))[0].permute(1, 2, 0).numpy()
        img = self.after(image=img)["image"].reshape(hwc.shape)  # albumentations may drop a grey channel axis
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), self.labels[i]


def _seed_worker(worker_id):
    info = torch.utils.data.get_worker_info()
    # torch gives each worker initial_seed = base seed (from the loader's generator) + worker_id
    info.dataset.dataset.seed(torch.initial_seed() % 2**62)


# ---- loaders ------------------------------------------------------------------------------------

def _mix_seed(*parts) -> int:
    """A well-spread 62-bit seed from integers (seed, epoch, rank, stream)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 30) ^ int(state[1])


class Loader:
    """Batches of one split: `set_epoch(e)`, `len()`, iteration yields (x, y) on `device`.

    x is float32 normalized (N, C, H, W) in channels_last memory format (contiguous with
    channels_last=False), y int64.
    Training loaders shuffle (one permutation per (seed, epoch), shared by all ranks) and augment
    (randomness per (seed, epoch, rank)). With world_size > 1, a training epoch is cut to a multiple
    of world_size and rank r takes every world_size-th sample from r (disjoint, equal sizes, as
    DistributedSampler with drop_last); an evaluation split is split the same way without the cut,
    so every sample is seen exactly once over all ranks.
    """

    def __init__(self, split: Split, dataset: Dataset, *, batch_size, train, augment, device, seed, rank,
                 world_size, drop_last, channels_last=True):
        if not 0 <= rank < world_size:
            raise CnnscopeError(f"rank {rank} is outside world_size {world_size}.")
        self.split, self.batch_size, self.train = split, batch_size, train
        self.augment = augment if train and augment is not None and augment != AugmentSpec() else None
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.epoch = 0
        self.mean = torch.tensor(dataset.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(dataset.std, device=self.device).view(1, -1, 1, 1)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        n = len(self.split)
        if self.train:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self):
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in batch order."""
        n = len(self.split)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, 0))
        order = torch.randperm(n, generator=g)
        order = order[: n // self.world_size * self.world_size]
        return order[self.rank::self.world_size]

    def _batches_of(self, idx):
        if self.drop_last:
            idx = idx[: len(idx) // self.batch_size * self.batch_size]
        return idx.split(self.batch_size)

    def _finish(self, x, y):
        """float [0, 1] or uint8 images on device -> normalized float32 in the loader's memory format."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format), y


class BatchLoader(Loader):
    """The fast path: batches are augmented whole. An in-memory split lives on `device` as one uint8
    tensor; a cached tree's batches are read from its file (Split.take) and then moved there."""

    def __init__(self, split, dataset, **kw):
        super().__init__(split, dataset, **kw)
        self.on_disk = split.rows is not None
        self.images = None if self.on_disk else split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.transform = BatchAugment(self.augment, dataset.mean) if self.augment else None

    def __iter__(self):
        g = torch.Generator(device=self.device).manual_seed(_mix_seed(self.seed, self.epoch, self.rank, 1))
        for idx in self._batches_of(self.indices().to(self.device)):
            if self.on_disk:
                x = self.split.take(idx.cpu()).to(self.device, non_blocking=True)
            else:
                x = self.images[idx]
            if self.transform is not None:
                x = self.transform(x, g)
            yield self._finish(x, self.labels[idx])


class AlbumentationsLoader(Loader):
    """The seeds' path: per-sample albumentations in `workers` DataLoader processes."""

    def __init__(self, split, dataset, *, workers=2, **kw):
        super().__init__(split, dataset, **kw)
        self.workers = workers
        self.samples = AlbumentationsDataset(split, self.augment or AugmentSpec(), dataset.mean)

    def __iter__(self):
        epoch_seed = _mix_seed(self.seed, self.epoch, self.rank, 1)
        self.samples.seed(epoch_seed)  # used as is when workers == 0
        subset = torch.utils.data.Subset(self.samples, self.indices().tolist())
        loader = torch.utils.data.DataLoader(
            subset, batch_size=self.batch_size, shuffle=False, drop_last=self.drop_last,
            num_workers=self.workers, worker_init_fn=_seed_worker if self.workers else None,
            generator=torch.Generator().manual_seed(epoch_seed), pin_memory=self.device.type == "cuda",
        )
        for x, y in loader:
            yield self._finish(x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))


def make_loader(split, dataset, *, batch_size, train, augment=None, backend="batch", device="cpu",
                seed=0, rank=0, world_size=1, drop_last=False, workers=2, channels_last=True):
    """A Loader over `split` (see Loader). `train` shuffles and applies `augment`; `backend` is
    "batch" (in-process, whole batches) or "albumentations" (per sample, `workers` processes);
    `channels_last`: the batches' memory format (False: contiguous)."""
    if backend not in BACKENDS:
        raise CnnscopeError(f"Unknown augmentation backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if split is None:
        raise CnnscopeError("This dataset has no such split (a validation split needs val_split > 0).")
    if train and augment is not None:
        check_fits(augment, split.input_shape[1:])
    kw = dict(batch_size=batch_size, train=train, augment=augment, device=device, seed=seed, rank=rank,
              world_size=world_size, drop_last=drop_last, channels_last=channels_last)
    if backend == "batch":
        return BatchLoader(split, dataset, **kw)
    return AlbumentationsLoader(split, dataset, workers=workers, **kw)


def subset(split: Split, n: int, seed: int = 0) -> Split:
    """A random n-image subset of `split`, fixed by `seed` (for quick experiments on big data)."""
    if n >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split(split.take(index), split.labels[index])  # in memory: n images


def normalize(images, mean, std):
    """Images in [0, 1] (N, C, H, W) -> the normalised floats a model trained with mean/std takes."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def first_images(split: Split, dataset: Dataset, n: int = PROBE_IMAGES, device="cpu") -> torch.Tensor:
    """The first `n` images of `split` on `device`, normalised as the loaders normalise them (contiguous);
    by default the memory-format check's probe batch (contiguous_reason)."""
    images = split.take(torch.arange(min(n, len(split)))).to(device)
    return normalize(images.float() / 255, dataset.mean, dataset.std)


def contiguous_reason(model, x, spec=None, say=None) -> str:
    """Why `model` needs contiguous batches (core.memory_format, on the probe batch `x`), or "" when
    channels_last batches give the same logits; where it needs them, `say` gets one line saying so."""
    reason = channels_last_refusal(model, x, spec)
    if reason and say is not None:
        say(f"{spec or type(model).__name__} runs on contiguous batches and weights: {reason}; "
            "channels_last would only have been faster.")
    return reason


def denormalize(x, mean, std):
    """Normalized (N, C, H, W) floats -> images in [0, 1] for plotting."""
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * std + mean).clamp(0, 1)


def augmented_samples(dataset: Dataset, spec: AugmentSpec, *, n, backend="batch", seed=0):
    """The first training batch of epoch 0 (n images) before and after the augmentation pipeline.

    Returns (originals, augmented, labels): (n, H, W, 3) float arrays in [0, 1] and a list of ints.
    """
    loader = make_loader(dataset.train, dataset, batch_size=n, train=True, augment=spec, backend=backend,
                         seed=seed, workers=0)
    idx = loader.indices()[:n]
    x, y = next(iter(loader))
    originals = dataset.train.take(idx).float().div(255)
    return rgb_pixels(originals), rgb_pixels(denormalize(x, dataset.mean, dataset.std)), y.tolist()

