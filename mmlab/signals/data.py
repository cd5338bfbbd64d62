"""Datasets for mmlab's accuracy signals: zero-cost proxies and short training runs.

One entry point, :func:`load_dataset`, turns a source string and a resolution into a
:class:`Dataset`: a train split and a held-out val split of ``(image, label)`` items, where the
image is a float32 ``(3, R, R)`` tensor normalised with the ImageNet mean/std and the label an
``int``. Sources:

* ``digits`` (the default): scikit-learn's handwritten digits, shipped inside scikit-learn.
* ``synthetic[:n=N,classes=K]``: seeded, procedurally generated gratings, for tests and smoke runs.
* ``fashion-mnist[:PATH]``: Zalando's Fashion-MNIST (60k train / 10k test, 28×28 grey, 10 classes,
  MIT licence), read from the standard idx files; harder than digits, so architectures differ.
* ``imagefolder:PATH``: a class-per-folder tree of image files on disk.

``digits`` and ``synthetic`` are preprocessed once into uint8 tensors (normalised per item on
access); ``imagefolder`` decodes lazily, after checking every chosen file up front.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from mmlab.signals.registry import DEFAULT_DATASET

__all__ = ["DEFAULT_DATASET", "Dataset", "dataset_names", "load_dataset", "make_loader"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)

_SYNTHETIC_DEFAULTS = {"n": 640, "classes": 10}  # 512 train / 128 val at the default val_fraction
_CHUNK = 256  # images resized / rendered at a time, to bound the float32 working set

_T = TypeVar("_T")


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: a train split and a disjoint, held-out val split.

    Attributes:
        name: The canonical source string it came from (e.g. ``"synthetic:n=640,classes=10"``).
        num_classes: Labels run ``0 .. num_classes - 1``.
        train: Training split; items are ``(float32 (in_chans, R, R) normalised image, int label)``.
        val: Held-out split with the same item layout.
        resolution: Image side ``R`` in pixels.
        skipped: Unreadable image files left out (only ``imagefolder`` can have any).
        in_chans: Image channels; always 3 (grey sources are replicated).
    """

    name: str
    num_classes: int
    train: TorchDataset
    val: TorchDataset
    resolution: int
    skipped: int = 0
    in_chans: int = 3

    def describe(self) -> str:
        """One line: name, classes, split sizes, image shape and any skipped files."""
        text = (
            f"{self.name}: {self.num_classes} classes, {len(self.train)} train / {len(self.val)} val, "
            f"{self.in_chans}x{self.resolution}x{self.resolution}"
        )
        return text + (f", {self.skipped} unreadable file(s) skipped" if self.skipped else "")


def dataset_names() -> list[str]:
    """The source forms :func:`load_dataset` accepts, for help text."""
    return ["digits", "synthetic[:n=N,classes=K]", "fashion-mnist[:PATH]", "imagefolder:PATH"]


FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the files."""


def fashion_mnist_folder(path: str = "") -> Path:
    """The folder holding the four Fashion-MNIST idx files: ``path`` if given, else
    ``$MMLAB_DATA/fashion-mnist``, else Debian's location; ``ValueError`` saying how to get them."""
    candidates = [Path(path).expanduser()] if path else [
        *([Path(os.environ["MMLAB_DATA"]) / "fashion-mnist"] if os.environ.get("MMLAB_DATA") else []), FASHION_DEBIAN]
    for folder in candidates:
        if all((folder / name).is_file() for name in FASHION_FILES.values()):
            return folder
    where = " or ".join(str(c) for c in candidates)
    raise ValueError(f"fashion-mnist: the idx files ({', '.join(FASHION_FILES.values())}) are not in {where}; "
                     "install them with `apt-get install dataset-fashion-mnist` or give fashion-mnist:PATH")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a numpy array: uint8 images (N, H, W) or labels (N,)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} values for shape {shape}")
    return data.reshape(shape)


def check_source(source: str) -> None:
    """Cheap up-front check of a source string (syntax, and that a path exists), without loading it.

    Raises:
        ValueError: one line naming the source and what is allowed or how to get the files.
    """
    kind, sep, rest = source.partition(":")
    if source == "digits":
        return
    if kind == "synthetic":
        _parse_synthetic(rest)
        return
    if kind == "fashion-mnist":
        fashion_mnist_folder(rest)
        return
    if kind == "imagefolder" and sep:
        if not rest:
            raise ValueError("imagefolder: no path given; use imagefolder:PATH")
        if not Path(rest).expanduser().is_dir():
            raise ValueError(f"imagefolder: {rest!r} is not a folder; give PATH/<class>/<image> files")
        return
    raise ValueError(f"unknown dataset source {source!r}; allowed: {', '.join(dataset_names())}")


def load_dataset(
    source: str,
    resolution: int,
    *,
    seed: int = 0,
    max_per_class: int | None = None,
    val_fraction: float = 0.2,
) -> Dataset:
    """Load a dataset as a train split and a held-out val split at ``resolution``.

    Sources:
        ``digits``: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``): 1,797
            real 8x8 grey scans of the digits 0-9, shipped inside scikit-learn, so no download.
            Upscaled bilinearly to ``R``, so every image is a blurry blow-up of 64 pixels, with
            grey replicated to three channels. Tiny, real and easy (a linear classifier on the raw
            pixels passes 95%): good for checking cheaply whether a ranking signal (a zero-cost
            proxy, a short training run) orders models sensibly; not ImageNet-like, and it says
            nothing about ImageNet-scale accuracy.
        ``synthetic[:n=N,classes=K]``: ``N`` images (default 640, so 512 train / 128 val)
            of ``K`` balanced classes (default 10). Class ``k`` is a sinusoidal grating at
            orientation ``k * pi / K`` with ``2 + k % 3`` cycles per image, tinted with hue ``k / K``;
            each image draws its own phase, contrast, a small tilt and pixel noise from ``seed``.
            Learnable by a small CNN in seconds; for tests and smoke runs only.
        ``imagefolder:PATH``: ``PATH/<class>/<image>`` (torchvision ``ImageFolder`` layout; classes
            are the sub-folders holding image files, sorted by name). If ``PATH`` has both ``train/``
            and ``val/`` sub-folders those are the splits (``val_fraction`` is then unused);
            otherwise each class is split by ``val_fraction``. Images are resized (shorter side
            to ``R``, bilinear, antialiased), center-cropped to ``R x R`` and decoded lazily. Every
            chosen file is decoded once up front; unreadable ones are skipped with one warning
            and counted in ``skipped``.

    The split is stratified and seeded: each class is shuffled under ``seed`` and its first images go
    to val, ``round(total * val_fraction)`` in all, shared out in proportion to class size (every
    class of two or more images keeps at least one in each split); the rest go to train.

    Args:
        source: One of :func:`dataset_names`.
        resolution: Output image side ``R`` in pixels.
        seed: Seeds the split, the ``max_per_class`` choice and ``synthetic``'s images.
        max_per_class: If given, keep at most this many images of each class in each split,
            chosen at random under ``seed``; for quick runs.
        val_fraction: Share of each class held out for val, in (0, 1).

    Returns:
        The :class:`Dataset`.

    Raises:
        ValueError: An unknown source, a bad argument, or an ``imagefolder`` path that is missing,
            holds no (readable) images, or has fewer than two classes.
    """
    _check_args(resolution, seed, max_per_class, val_fraction)
    kind, sep, rest = source.partition(":")
    if source == "digits":
        return _load_digits(resolution, seed, max_per_class, val_fraction)
    if kind == "synthetic":
        n, classes = _parse_synthetic(rest)
        return _load_synthetic(n, classes, resolution, seed, max_per_class, val_fraction)
    if kind == "fashion-mnist":
        return _load_fashion(fashion_mnist_folder(rest), resolution, seed, max_per_class)
    if kind == "imagefolder" and sep:
        if not rest:
            raise ValueError("imagefolder: no path given; use imagefolder:PATH")
        return _load_imagefolder(Path(rest).expanduser(), resolution, seed, max_per_class, val_fraction)
    raise ValueError(f"unknown dataset source {source!r}; allowed: {', '.join(dataset_names())}")


def make_loader(
    ds: TorchDataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    """A DataLoader over one split whose order is fixed by ``seed``.

    Args:
        ds: A split, e.g. ``Dataset.train``.
        batch_size: Items per batch; the last batch may be smaller.
        shuffle: Reshuffle every epoch (the sequence of orders is fixed by ``seed``).
        seed: Seeds the shuffling.
        num_workers: Loader worker processes (kept alive across epochs when > 0).

    Returns:
        A loader yielding ``(images float32 (B, 3, R, R), labels int64 (B,))``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: {batch_size!r} is not allowed; must be an integer >= 1")
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


class Batches:
    """Batches of a split as ``(images float32 (B, 3, R, R), labels int64 (B,))`` on ``device``.

    An in-memory split (digits, synthetic, fashion-mnist) is indexed as one uint8 tensor kept on
    the device and normalised a batch at a time: no per-item Python, which dominates a short
    training run otherwise. Any other split goes through a ``DataLoader``. Shuffled orders are
    ``torch.randperm`` draws from a generator seeded once, one per epoch, as ``DataLoader`` does.
    """

    def __init__(self, ds: TorchDataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 device: str | torch.device = "cpu") -> None:
        self.ds, self.batch_size, self.shuffle, self.drop_last = ds, batch_size, shuffle, drop_last
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        if isinstance(ds, _Tensors):
            self.images = ds.images.to(self.device)  # (N, C, R, R) uint8
            self.labels = ds.labels.to(self.device)
            self.mean, self.std = _MEAN.to(self.device), _STD.to(self.device)
        else:
            self.loader = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                                     generator=self.generator)

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        if not isinstance(self.ds, _Tensors):
            for images, labels in self.loader:
                yield images.to(self.device), labels.to(self.device)
            return
        n = len(self.ds)
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.shuffle else None
        for i in range(len(self)):
            index = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[index] if order is not None else index
            grey = self.images[idx].float().div_(255)  # (B, C, R, R), C = 1 or 3
            yield (grey.expand(-1, 3, -1, -1) - self.mean) / self.std, self.labels[idx]


class _Tensors(TorchDataset):
    """Preprocessed images kept as uint8 and normalised to float32 per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images  # (N, C, R, R) uint8; C is 1 (grey, replicated on access) or 3
        self.labels = labels  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255).expand(3, -1, -1)  # (C, R, R) -> (3, R, R)
        return (image - _MEAN) / _STD, int(self.labels[index])


class _Files(TorchDataset):
    """Image files decoded, resized, cropped and normalised per item."""

    def __init__(self, samples: list[tuple[Path, int]], resolution: int) -> None:
        self.samples = samples
        self.transform = transforms.Compose(
            [
                transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
                transforms.CenterCrop(resolution),
                transforms.ToTensor(),  # (H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def _check_args(resolution: int, seed: int, max_per_class: int | None, val_fraction: float) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution: {resolution!r} is not allowed; must be an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: {seed!r} is not allowed; must be an integer >= 0")
    if max_per_class is not None and (
        isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1
    ):
        raise ValueError(f"max_per_class: {max_per_class!r} is not allowed; must be None or an integer >= 1")
    if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: {val_fraction!r} is not allowed; must be strictly between 0 and 1")


def _shuffle(groups: list[list[_T]], rng: np.random.Generator) -> list[list[_T]]:
    """Each group (one per class) in a seeded random order."""
    return [[group[i] for i in rng.permutation(len(group))] for group in groups]


def _stratify(groups: list[list[_T]], val_fraction: float) -> tuple[list[list[_T]], list[list[_T]]]:
    """Cut each class's shuffled members into (train, val) lists of lists.

    Val takes ``round(total * val_fraction)`` members in all, shared out in proportion to class
    size (largest remainder first, lower class on ties); then every class with two or more
    members keeps at least one in each split, and a class of one goes to train.
    """
    quotas = [len(group) * val_fraction for group in groups]
    counts = [math.floor(q) for q in quotas]
    extra = math.floor(sum(quotas) + 0.5) - sum(counts)
    for k in sorted(range(len(groups)), key=lambda k: counts[k] - quotas[k])[:extra]:
        counts[k] += 1
    counts = [min(max(c, 1), len(group) - 1) if len(group) > 1 else 0 for c, group in zip(counts, groups)]
    return [group[c:] for c, group in zip(counts, groups)], [group[:c] for c, group in zip(counts, groups)]


def _split(
    labels: Sequence[int], num_classes: int, val_fraction: float, max_per_class: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, val) indices: stratified by val_fraction, then capped per class and split."""
    labels = np.asarray(labels)
    groups = [np.flatnonzero(labels == k).tolist() for k in range(num_classes)]
    splits = _stratify(_shuffle(groups, np.random.default_rng(seed)), val_fraction)
    train, val = (sorted(i for members in split for i in members[:max_per_class]) for split in splits)
    return torch.tensor(train, dtype=torch.long), torch.tensor(val, dtype=torch.long)


def _quantise(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (values outside are clipped) to uint8, same shape; overwrites its input."""
    return images.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize to uint8: (N, C, h, w) float in [0, 1] -> (N, C, R, R) uint8."""
    out = torch.empty((len(images), images.shape[1], resolution, resolution), dtype=torch.uint8)
    for start in range(0, len(images), _CHUNK):
        chunk = images[start : start + _CHUNK]
        out[start : start + _CHUNK] = _quantise(
            F.interpolate(chunk, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
        )
    return out


def _load_digits(resolution: int, seed: int, max_per_class: int | None, val_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits  # deferred: importing scikit-learn takes about a second

    bunch = load_digits()
    labels = torch.from_numpy(bunch.target).long()  # (1797,)
    grey = torch.from_numpy(bunch.images).float().div(16).unsqueeze(1)  # (N, 8, 8) 0..16 -> (N, 1, 8, 8) in [0, 1]
    train, val = _split(bunch.target, 10, val_fraction, max_per_class, seed)
    return Dataset(
        name="digits",
        num_classes=10,
        train=_Tensors(_resize(grey[train], resolution), labels[train]),
        val=_Tensors(_resize(grey[val], resolution), labels[val]),
        resolution=resolution,
    )


def _load_fashion(folder: Path, resolution: int, seed: int, max_per_class: int | None) -> Dataset:
    """Official train split (capped at ``max_per_class`` per class, seeded) and the whole 10k test split."""
    labels = torch.from_numpy(read_idx(folder / FASHION_FILES["train_labels"]).astype(np.int64))
    test_labels = torch.from_numpy(read_idx(folder / FASHION_FILES["test_labels"]).astype(np.int64))
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels.numpy() == k) for k in range(10)]
    keep = np.sort(np.concatenate([rng.permutation(g)[:max_per_class] for g in groups]))
    train = torch.from_numpy(read_idx(folder / FASHION_FILES["train_images"])[keep].copy())  # (N, 28, 28) uint8
    test = torch.from_numpy(read_idx(folder / FASHION_FILES["test_images"]).copy())  # (10000, 28, 28) uint8

    def prepare(images: torch.Tensor) -> torch.Tensor:  # (N, 28, 28) uint8 -> (N, 1, R, R) uint8
        grey = images.unsqueeze(1)
        if resolution == grey.shape[-1]:
            return grey
        return _resize(grey.float().div_(255), resolution)

    return Dataset(
        name="fashion-mnist",
        num_classes=10,
        train=_Tensors(prepare(train), labels[torch.from_numpy(keep)]),
        val=_Tensors(prepare(test), test_labels),
        resolution=resolution,
    )


def _parse_synthetic(options: str) -> tuple[int, int]:
    params = dict(_SYNTHETIC_DEFAULTS)
    for item in filter(None, options.split(",")):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in params or not value.isdigit():
            raise ValueError(f"synthetic: bad option {item!r}; use synthetic[:n=N,classes=K] with integers")
        params[key] = int(value)
    n, classes = params["n"], params["classes"]
    if classes < 2 or n < 2 * classes:
        raise ValueError(f"synthetic: n={n}, classes={classes} is not allowed; need classes >= 2 and n >= 2 * classes")
    return n, classes


def _hue(hue: torch.Tensor) -> torch.Tensor:
    """A smooth colour wheel: (N,) hue in [0, 1) -> (N, 3) RGB in [0, 1]."""
    return 0.5 + 0.5 * torch.cos(2 * math.pi * (hue[:, None] - torch.tensor([0.0, 1 / 3, 2 / 3])))


def _gratings(labels: torch.Tensor, num_classes: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """Render the synthetic classes: (N,) labels -> (N, 3, R, R) uint8."""
    n = len(labels)
    spacing = math.pi / num_classes
    theta = (labels + torch.rand(n, generator=generator) * 0.5 - 0.25) * spacing  # class angle +- a quarter step
    cycles = 2.0 + labels % 3
    phase = torch.rand(n, generator=generator) * 2 * math.pi
    contrast = 0.25 + 0.15 * torch.rand(n, generator=generator)
    tint = _hue(labels / num_classes)  # (N, 3)
    axis = torch.linspace(-0.5, 0.5, resolution)
    y, x = torch.meshgrid(axis, axis, indexing="ij")  # (R, R) each
    out = torch.empty((n, 3, resolution, resolution), dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        s = slice(start, start + _CHUNK)
        along = x * theta[s].cos().view(-1, 1, 1) + y * theta[s].sin().view(-1, 1, 1)  # (n, R, R)
        wave = torch.sin(2 * math.pi * cycles[s].view(-1, 1, 1) * along + phase[s].view(-1, 1, 1))
        image = tint[s].view(-1, 3, 1, 1) * wave[:, None]  # (n, 3, R, R)
        image.mul_(contrast[s].view(-1, 1, 1, 1)).add_(0.5)
        image.add_(torch.randn(image.shape, generator=generator).mul_(0.08))
        out[s] = _quantise(image)
    return out


def _load_synthetic(
    n: int, classes: int, resolution: int, seed: int, max_per_class: int | None, val_fraction: float
) -> Dataset:
    labels = torch.arange(n) % classes
    train, val = _split(labels.tolist(), classes, val_fraction, max_per_class, seed)
    generator = torch.Generator().manual_seed(seed)
    return Dataset(
        name=f"synthetic:n={n},classes={classes}",
        num_classes=classes,
        train=_Tensors(_gratings(labels[train], classes, resolution, generator), labels[train]),
        val=_Tensors(_gratings(labels[val], classes, resolution, generator), labels[val]),
        resolution=resolution,
    )


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMG_EXTENSIONS


def _list_classes(root: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files (searched recursively), for each sub-folder holding any."""
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in folder.rglob("*") if _is_image(p))
        if files:
            classes[folder.name] = files
    if not classes:
        loose = sum(1 for p in root.iterdir() if _is_image(p))
        hint = f"; its {loose} image(s) must sit in one sub-folder per class" if loose else ""
        raise ValueError(f"imagefolder: no image files in class sub-folders of {root}{hint}")
    return classes


def _readable(path: Path, resolution: int) -> bool:
    """Whether the file decodes in full (JPEGs at reduced scale, which still reads every byte)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (resolution, resolution))
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    return True


def _pick(candidates: list[list[Path]], max_per_class: int | None, resolution: int) -> tuple[list[tuple[Path, int]], int]:
    """Walk each class's shuffled files, keeping readable ones up to the cap; (samples, skipped)."""
    samples: list[tuple[Path, int]] = []
    skipped = 0
    for label, files in enumerate(candidates):
        kept = 0
        for path in files:
            if max_per_class is not None and kept == max_per_class:
                break
            if _readable(path, resolution):
                samples.append((path, label))
                kept += 1
            else:
                skipped += 1
    return sorted(samples), skipped


def _load_imagefolder(
    root: Path, resolution: int, seed: int, max_per_class: int | None, val_fraction: float
) -> Dataset:
    if not root.exists():
        raise ValueError(f"imagefolder: {root} does not exist")
    if not root.is_dir():
        raise ValueError(f"imagefolder: {root} is not a directory")
    rng = np.random.default_rng(seed)
    presplit = (root / "train").is_dir() and (root / "val").is_dir()
    top = root / "train" if presplit else root
    found = _list_classes(top)
    names = list(found)
    if len(names) < 2:
        raise ValueError(f"imagefolder: {top} has only one class folder with images ({names[0]}); need at least two")
    if presplit:
        found_val = _list_classes(root / "val")
        if unknown := sorted(set(found_val) - set(names)):
            raise ValueError(f"imagefolder: {root / 'val'} has classes missing from {top}: {', '.join(unknown)}")
        train_candidates = _shuffle(list(found.values()), rng)
        val_candidates = _shuffle([found_val.get(name, []) for name in names], rng)
    else:
        train_candidates, val_candidates = _stratify(_shuffle(list(found.values()), rng), val_fraction)
    train, skipped_train = _pick(train_candidates, max_per_class, resolution)
    val, skipped_val = _pick(val_candidates, max_per_class, resolution)
    skipped = skipped_train + skipped_val
    if skipped:
        warnings.warn(f"imagefolder: skipped {skipped} unreadable image file(s) under {root}", stacklevel=3)
    if not train or not val:
        empty = "train" if not train else "val"
        raise ValueError(f"imagefolder: no readable images left for the {empty} split of {root}")
    return Dataset(
        name=f"imagefolder:{root}",
        num_classes=len(names),
        train=_Files(train, resolution),
        val=_Files(val, resolution),
        resolution=resolution,
        skipped=skipped,
    )
