"""Datasets behind one interface, with the DeiT recipe's transforms (docs/paper.md section 6).

`digits` (scikit-learn's 1797 8x8 handwritten digits, no download) is the embedded default, so a
trial runs anywhere; `cifar10` / `cifar100` (torchvision, from a local root, optional download),
`imagefolder` (ImageNet layout: `root/train/<class>/*`, `root/val/<class>/*`) and `synthetic`
(deterministic random tensors for throughput benchmarks) sit behind the same calls:

    check_data(cfg.data)                      # ConfigError before anything is built
    bundle = build_datasets(cfg.data, cfg.aug, img_size)
    loader = make_loader(bundle.train, ..., seed=cfg.seed, epoch=e)

Training images go through timm's transform factory (random resized crop, flip, RandAugment,
colour jitter, random erasing, bicubic); evaluation resizes to img_size / crop_pct and centre-crops.
The training order and every data-loader worker seed are functions of (seed, epoch) only, which
is what makes a resumed trial replay the uninterrupted one exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainers.config import DATASETS, AugConfig, ConfigError, DataConfig

__all__ = [
    "DataBundle",
    "build_datasets",
    "check_data",
    "make_loader",
    "num_classes",
    "train_size",
]

# Held-out split of digits is fixed, independent of the trial seed, so every trial of a sweep is
# scored on the same images.
DIGITS_SPLIT_SEED = 0
_CIFAR = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta"], 10),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test", "meta"], 100),
}


@dataclass(frozen=True)
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int


# ---------------------------------------------------------------------------------------- checks

def check_data(cfg: DataConfig) -> None:
    """Raise ConfigError if the dataset cannot be loaded as configured (cheap: no decoding)."""
    if cfg.name not in DATASETS:
        raise ConfigError(f"data.name must be one of {', '.join(DATASETS)} but got {cfg.name!r}")
    if cfg.name in _CIFAR:
        _check_cifar(cfg)
    elif cfg.name == "imagefolder":
        _check_imagefolder(cfg)


def _check_cifar(cfg: DataConfig) -> None:
    _, folder, files, _ = _CIFAR[cfg.name]
    if cfg.root is None:
        raise ConfigError(
            f"data.root must be set for {cfg.name}: the folder that holds (or will hold) "
            f"{folder}/; for example --set data.root=./data --set data.download=true"
        )
    if cfg.download:
        return
    missing = [f for f in files if not (Path(cfg.root) / folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"data.root {cfg.root!r}: {cfg.name} files not found (expected {folder}/ with "
            f"{', '.join(missing)} under {Path(cfg.root).resolve()}); put the extracted dataset "
            f"there or set data.download=true on a machine with internet"
        )


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir())


def _check_imagefolder(cfg: DataConfig) -> None:
    if cfg.root is None:
        raise ConfigError("data.root must be set for imagefolder: a folder with train/ and val/, "
                          "each holding one sub-folder of images per class")
    root = Path(cfg.root)
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            raise ConfigError(
                f"data.root {cfg.root!r}: {split_dir.resolve()} does not exist; imagefolder "
                f"expects {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg"
            )
        if not _class_dirs(split_dir):
            raise ConfigError(f"data.root {cfg.root!r}: {split_dir} has no class sub-folders")
    train_classes, val_classes = _class_dirs(root / "train"), _class_dirs(root / "val")
    if train_classes != val_classes:
        only = sorted(set(train_classes) ^ set(val_classes))[:5]
        raise ConfigError(f"data.root {cfg.root!r}: train/ and val/ have different classes "
                          f"(e.g. {', '.join(only)}); both need the same class folders")


def num_classes(cfg: DataConfig) -> int:
    """Number of classes of the configured dataset (without loading images)."""
    if cfg.name == "digits":
        return 10
    if cfg.name in _CIFAR:
        return _CIFAR[cfg.name][3]
    if cfg.name == "synthetic":
        return cfg.synthetic_classes
    if cfg.name == "imagefolder":
        check_data(cfg)
        assert cfg.root is not None  # check_data requires it
        return len(_class_dirs(Path(cfg.root) / "train"))
    raise ConfigError(f"data.name must be one of {', '.join(DATASETS)} but got {cfg.name!r}")


def train_size(cfg: DataConfig) -> int | None:
    """Number of training images where it is known without scanning files (None: imagefolder)."""
    if cfg.name == "digits":
        return len(_digits_split(cfg.val_fraction)[2])
    if cfg.name in _CIFAR:
        return 50_000
    if cfg.name == "synthetic":
        return cfg.synthetic_train
    return None


# ------------------------------------------------------------------------------------ transforms

def train_transform(aug: AugConfig, img_size: int) -> Callable:
    from timm.data import create_transform

    return create_transform(
        input_size=img_size,
        is_training=True,
        color_jitter=aug.color_jitter,
        auto_augment=aug.auto_augment,
        interpolation=aug.interpolation,
        scale=aug.scale,
        hflip=aug.hflip,
        re_prob=aug.reprob,
        re_mode="pixel",  # DeiT erases with per-pixel noise
        re_count=1,
    )


def eval_transform(aug: AugConfig, img_size: int) -> Callable:
    from timm.data import create_transform

    # Resize to img_size / crop_pct, centre-crop img_size (256 -> 224 for the paper's recipe).
    return create_transform(input_size=img_size, is_training=False,
                            interpolation=aug.interpolation, crop_pct=aug.crop_pct)


# -------------------------------------------------------------------------------------- datasets

class _ArrayImages(Dataset):
    """uint8 images (N, H, W) held in memory, served as RGB PIL images through a transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[index], mode="L").convert("RGB")
        return self.transform(img), int(self.labels[index])

    def transformed_once(self) -> Dataset:
        """For a deterministic transform (evaluation's resize, crop and normalize): every image
        through it once, held as one tensor, when that takes at most EVAL_CACHE_BYTES; each
        epoch's validation then reads the tensors it would have computed (the digits validation
        split went through PIL every epoch, most of a small trial's epoch time)."""
        first = self[0][0]
        if len(self) * first.numel() * first.element_size() > EVAL_CACHE_BYTES:
            return self
        images = torch.stack([first] + [self[i][0] for i in range(1, len(self))])
        return TensorDataset(images, torch.tensor(self.labels, dtype=torch.int64))


# Validation images held transformed in memory up to this size (digits at 32 px: 4.4 MB).
EVAL_CACHE_BYTES = 64 << 20


@functools.lru_cache(maxsize=4)
def _digits_split(val_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values are 0..16; stretch to 0..255 so the PIL-based augmentations see a normal image.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    x_tr, x_va, y_tr, y_va = train_test_split(
        images, digits.target, test_size=val_fraction, stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    for a in (x_tr, x_va, y_tr, y_va):
        a.setflags(write=False)
    return x_tr, x_va, y_tr, y_va


class SyntheticImages(Dataset):
    """Deterministic random images: a low-frequency class pattern plus noise, already normalized.

    Image `i` is a pure function of (split offset, i), so no memory grows with the dataset size and
    no augmentation runs: the benchmarks measure the model, not the input pipeline.
    """

    def __init__(self, size: int, num_classes: int, img_size: int, offset: int):
        self.size, self.num_classes = size, num_classes
        self.img_size, self.offset = img_size, offset

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = index % self.num_classes
        pattern_gen = torch.Generator().manual_seed(1_000_003 + label)
        pattern = torch.randn(1, 3, 4, 4, generator=pattern_gen)
        pattern = torch.nn.functional.interpolate(pattern, size=self.img_size, mode="bilinear",
                                                  align_corners=False)[0]  # (3, H, W)
        noise_gen = torch.Generator().manual_seed(self.offset + index)
        noise = torch.randn(3, self.img_size, self.img_size, generator=noise_gen)
        return pattern + 0.5 * noise, label


def build_datasets(data: DataConfig, aug: AugConfig, img_size: int) -> DataBundle:
    """The train and validation datasets of `data`, transformed to `img_size` pixels."""
    check_data(data)
    if data.name == "synthetic":
        return DataBundle(
            SyntheticImages(data.synthetic_train, data.synthetic_classes, img_size, offset=0),
            SyntheticImages(data.synthetic_val, data.synthetic_classes, img_size,
                            offset=data.synthetic_train),
            data.synthetic_classes,
        )
    t_train, t_eval = train_transform(aug, img_size), eval_transform(aug, img_size)
    if data.name == "digits":
        x_tr, x_va, y_tr, y_va = _digits_split(data.val_fraction)
        return DataBundle(_ArrayImages(x_tr, y_tr, t_train),
                          _ArrayImages(x_va, y_va, t_eval).transformed_once(), 10)
    if data.name in _CIFAR:
        import torchvision.datasets as tvd

        cls_name, _, _, n = _CIFAR[data.name]
        cls = getattr(tvd, cls_name)
        train = cls(data.root, train=True, transform=t_train, download=data.download)
        val = cls(data.root, train=False, transform=t_eval, download=data.download)
        return DataBundle(train, val, n)
    if data.name == "imagefolder":
        from torchvision.datasets import ImageFolder

        assert data.root is not None  # check_data (above) requires it
        train = ImageFolder(str(Path(data.root) / "train"), transform=t_train)
        val = ImageFolder(str(Path(data.root) / "val"), transform=t_eval)
        return DataBundle(train, val, len(train.classes))
    raise ConfigError(f"data.name must be one of {', '.join(DATASETS)} but got {data.name!r}")


# --------------------------------------------------------------------------------------- loaders

def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG that orders epoch `epoch` (1-based) of a trial with `seed`, and seeds its workers."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int = 0, epoch: int = 0,
                num_workers: int = 0, pin_memory: bool = False, drop_last: bool = False
                ) -> DataLoader:
    """A DataLoader whose order (train: shuffled) and worker seeds depend only on (seed, epoch).

    Build a fresh training loader each epoch: persistent workers would carry augmentation RNG
    state across epochs that a checkpoint cannot capture.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        # Also for evaluation: the loader draws its worker base seed from this generator, which
        # keeps the global torch RNG (dropout, drop-path, mixup) untouched by validation.
        generator=epoch_generator(seed, epoch),
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=False,
    )
