import warnings
from pathlib import Path

import numpy as np

import pytest
import torch
from PIL import Image
from torch import nn

from mmlab.signals.data import DEFAULT_DATASET, IMAGENET_MEAN, IMAGENET_STD, Dataset, dataset_names, load_dataset, make_loader


def whole(split) -> tuple[torch.Tensor, torch.Tensor]:
    """A split as one (images (N, 3, R, R), labels (N,)) batch, in stored order."""
    return next(iter(make_loader(split, len(split), shuffle=False)))


def write_tree(root: Path, counts: dict[str, int], size: tuple[int, int] = (20, 12)) -> None:
    """``counts[c]`` small PNGs of distinct colours under ``root/c``."""
    for index, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", size, (40 * index, 20 * i, 128)).save(root / name / f"{i}.png")


def test_digits_loads_offline_with_the_right_counts_and_shapes():
    ds = load_dataset(DEFAULT_DATASET, 16)
    assert DEFAULT_DATASET == "digits" and isinstance(ds, Dataset)
    assert (ds.name, ds.num_classes, ds.resolution, ds.in_chans, ds.skipped) == ("digits", 10, 16, 3, 0)
    assert (len(ds.train), len(ds.val)) == (1438, 359)  # round(1797 * 0.2) held out
    image, label = ds.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and isinstance(label, int)
    for split in (ds.train, ds.val):
        images, labels = whole(split)
        assert sorted(labels.unique().tolist()) == list(range(10))
        # ImageNet-normalised grey: undone, the three channels agree and span [0, 1] (ink on blank paper)
        raw = images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        assert torch.allclose(raw[:, 0], raw[:, 2], atol=1e-5)
        assert raw.min().item() == pytest.approx(0, abs=1e-5) and raw.max().item() == pytest.approx(1, abs=1e-5)
    assert "1438 train / 359 val" in ds.describe()


def test_digits_same_seed_same_split_and_tensors():
    a, b, c = (load_dataset("digits", 12, seed=s) for s in (3, 3, 4))
    for split in ("train", "val"):
        assert all(torch.equal(x, y) for x, y in zip(whole(getattr(a, split)), whole(getattr(b, split))))
    assert not torch.equal(whole(a.val)[0], whole(c.val)[0])


def test_max_per_class_caps_each_split():
    ds = load_dataset("digits", 8, max_per_class=5, seed=1)
    for split in (ds.train, ds.val):
        assert torch.bincount(whole(split)[1]).tolist() == [5] * 10
    again = load_dataset("digits", 8, max_per_class=5, seed=1)
    assert torch.equal(whole(ds.train)[0], whole(again.train)[0])


def test_synthetic_is_deterministic_and_sized():
    a, b = load_dataset("synthetic", 16), load_dataset("synthetic", 16)
    assert (a.num_classes, len(a.train), len(a.val)) == (10, 512, 128)
    assert all(torch.equal(x, y) for x, y in zip(whole(a.train), whole(b.train)))
    assert not torch.equal(whole(a.train)[0], whole(load_dataset("synthetic", 16, seed=1).train)[0])
    small = load_dataset("synthetic:n=60,classes=3", 8, val_fraction=0.5)
    assert (small.name, small.num_classes, len(small.train), len(small.val)) == ("synthetic:n=60,classes=3", 3, 30, 30)
    assert torch.bincount(whole(small.val)[1]).tolist() == [10, 10, 10]


def test_synthetic_is_learnable_by_a_small_cnn():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: one thread is fastest and immune to a busy machine
    try:
        ds = load_dataset("synthetic", 16)
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(32, ds.num_classes),
        )  # fmt: skip
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for epoch in range(8):
            for x, y in make_loader(ds.train, 64, shuffle=True, seed=epoch):
                opt.zero_grad()
                nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
        x, y = whole(ds.val)
        with torch.no_grad():
            assert (net(x).argmax(1) == y).float().mean() >= 0.8
    finally:
        torch.set_num_threads(threads)


def test_make_loader_order_is_seeded():
    ds = load_dataset("synthetic:n=40,classes=4", 8)
    order = [torch.cat([y for _, y in make_loader(ds.train, 8, shuffle=True, seed=s)]) for s in (5, 5, 6)]
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], order[2])
    images, labels = next(iter(make_loader(ds.train, 8, shuffle=False)))
    assert images.shape == (8, 3, 8, 8) and labels.dtype == torch.int64


def test_imagefolder_flat_split_skips_a_corrupt_file(tmp_path):
    write_tree(tmp_path, {"cat": 5, "dog": 5, "emu": 5})
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (tmp_path / "emu" / "notes.txt").write_text("ignored: not an image extension")
    with pytest.warns(UserWarning, match="skipped 1 unreadable") as caught:
        ds = load_dataset(f"imagefolder:{tmp_path}", 10)
    assert len(caught) == 1
    assert (ds.num_classes, ds.skipped, len(ds.train) + len(ds.val), len(ds.val)) == (3, 1, 15, 3)
    assert "1 unreadable file(s) skipped" in ds.describe()
    images, labels = whole(ds.train)
    assert images.shape == (12, 3, 10, 10) and images.dtype == torch.float32
    assert torch.bincount(labels).tolist() == [4, 4, 4] and torch.bincount(whole(ds.val)[1]).tolist() == [1, 1, 1]
    # a flat colour survives resize and crop exactly: every image has blue = 128
    first = whole(ds.train)[0][0]
    assert torch.allclose(first[2], torch.full((10, 10), (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]), atol=1e-5)


def test_imagefolder_skips_a_truncated_jpeg(tmp_path):
    write_tree(tmp_path, {"a": 3, "b": 3})
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "a" / "cut.jpg")
    data = (tmp_path / "a" / "cut.jpg").read_bytes()
    (tmp_path / "a" / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipped 1"):
        assert load_dataset(f"imagefolder:{tmp_path}", 8).skipped == 1


def test_imagefolder_uses_train_and_val_subfolders(tmp_path):
    write_tree(tmp_path / "train", {"a": 3, "b": 4})
    write_tree(tmp_path / "val", {"a": 2, "b": 1}, size=(9, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(f"imagefolder:{tmp_path}", 8, val_fraction=0.9)  # val_fraction unused here
    assert (ds.num_classes, len(ds.train), len(ds.val), ds.skipped) == (2, 7, 3, 0)
    assert whole(ds.val)[1].tolist() == [0, 0, 1] and whole(ds.val)[0].shape == (3, 3, 8, 8)


def test_imagefolder_max_per_class_is_seeded(tmp_path):
    write_tree(tmp_path, {"a": 10, "b": 10})
    pick = [load_dataset(f"imagefolder:{tmp_path}", 8, max_per_class=3, seed=s) for s in (0, 0, 2)]
    assert (len(pick[0].train), len(pick[0].val)) == (6, 4)  # val holds 2 per class, under the cap
    assert torch.equal(whole(pick[0].train)[0], whole(pick[1].train)[0])
    assert not torch.equal(whole(pick[0].train)[0], whole(pick[2].train)[0])


@pytest.mark.parametrize(
    "make, source, message",
    [
        (lambda p: None, "imagefolder:{p}/missing", "does not exist"),
        (lambda p: None, "imagefolder:{p}", "no image files"),
        (lambda p: write_tree(p, {"only": 3}), "imagefolder:{p}", "only one class"),
        (lambda p: Image.new("RGB", (4, 4)).save(p / "loose.png"), "imagefolder:{p}", "one sub-folder per class"),
        (lambda p: None, "imagefolder:", "no path given"),
        (lambda p: None, "cifar10", "unknown dataset source 'cifar10'; allowed: digits"),
        (lambda p: None, "synthetic:n=3", "need classes >= 2"),
        (lambda p: None, "synthetic:size=3", "bad option"),
    ],
)
def test_bad_sources_raise_one_line_value_errors(tmp_path, make, source, message):
    make(tmp_path)
    with pytest.raises(ValueError, match=message) as error:
        load_dataset(source.format(p=tmp_path), 8)
    assert "\n" not in str(error.value)


def test_all_unreadable_raises(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"junk")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no readable images"):
        load_dataset(f"imagefolder:{tmp_path}", 8)


@pytest.mark.parametrize(
    "kwargs", [{"resolution": 0}, {"val_fraction": 1.0}, {"val_fraction": 0}, {"max_per_class": 0}, {"seed": -1}]
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="is not allowed"):
        load_dataset("digits", **{"resolution": 8, **kwargs})


def test_make_loader_rejects_a_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(load_dataset("synthetic:n=20,classes=2", 8).train, 0, shuffle=False)


def test_dataset_names_lists_every_form():
    assert dataset_names() == ["digits", "synthetic[:n=N,classes=K]", "fashion-mnist[:PATH]", "imagefolder:PATH"]


def _write_idx(path, array):
    """A gzipped unsigned-byte idx file, as Fashion-MNIST ships them."""
    import gzip
    import struct

    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fake_fashion(folder, n_train=40, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        _write_idx(folder / name, array)
    return arrays


def test_fashion_mnist_reader_on_a_small_idx_file(tmp_path):
    from mmlab.signals.data import read_idx

    arrays = _fake_fashion(tmp_path / "fm")
    images = read_idx(tmp_path / "fm" / "train-images-idx3-ubyte.gz")
    assert images.shape == (40, 28, 28) and (images == arrays["train-images-idx3-ubyte.gz"]).all()
    ds = load_dataset(f"fashion-mnist:{tmp_path / 'fm'}", 28, seed=0, max_per_class=2)
    assert (ds.num_classes, len(ds.train), len(ds.val)) == (10, 20, 20)  # train capped per class, test whole
    image, label = ds.val[3]
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte.gz"][3]).float() / 255  # 28 px: no resize
    assert label == 3 and torch.allclose(image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], expected, atol=1e-6)


def test_fashion_mnist_locations_and_errors(tmp_path, monkeypatch):
    from mmlab.signals.data import check_source

    _fake_fashion(tmp_path / "data" / "fashion-mnist")
    monkeypatch.setenv("MMLAB_DATA", str(tmp_path / "data"))
    assert load_dataset("fashion-mnist", 16, seed=0).name == "fashion-mnist"  # found under $MMLAB_DATA
    with pytest.raises(ValueError, match=r"fashion-mnist: the idx files .* not in /nonexistent; install them with `apt-get install dataset-fashion-mnist`"):
        check_source("fashion-mnist:/nonexistent")
    (tmp_path / "bad").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / "bad" / name).write_bytes(b"\x1f\x8b")  # not even gzip
    with pytest.raises(Exception):
        load_dataset(f"fashion-mnist:{tmp_path / 'bad'}", 16)


def test_batches_match_per_item_access():
    from mmlab.signals.data import Batches

    ds = load_dataset("synthetic:n=40,classes=4", 16, seed=0)
    images, labels = next(iter(Batches(ds.train, 8, shuffle=False)))
    assert torch.allclose(images, torch.stack([ds.train[i][0] for i in range(8)]), atol=1e-6)
    assert labels.tolist() == [ds.train[i][1] for i in range(8)]
    a = [y.tolist() for _, y in Batches(ds.train, 8, shuffle=True, seed=3)]
    b = [y.tolist() for _, y in Batches(ds.train, 8, shuffle=True, seed=3)]
    assert a == b and sorted(sum(a, [])) == sorted(int(ds.train[i][1]) for i in range(len(ds.train)))
