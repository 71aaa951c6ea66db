"""Tests of dbloss.data.images (image dataset, error handling) and dbloss.data.transforms."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.io import encode_jpeg, write_file, write_png

from dbloss.data.images import ImageLoadError, MultiLabelImageDataset, load_image
from dbloss.data.table import MultiLabelSet
from dbloss.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PhotoMetricDistortion,
    RandomSideCrop,
    eval_transform,
    train_transform,
)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def _rand_u8(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


@pytest.fixture
def image_dir(tmp_path):
    """rgb.png (3x20x30), gray.png (1x16x16), photo.jpg (3x24x18), corrupt.png, empty.png."""
    write_png(_rand_u8(3, 20, 30), str(tmp_path / "rgb.png"))
    write_png(_rand_u8(1, 16, 16, seed=1), str(tmp_path / "gray.png"))
    write_file(str(tmp_path / "photo.jpg"), encode_jpeg(_rand_u8(3, 24, 18, seed=2), quality=90))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"definitely not a png" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    return tmp_path


def _table(root, files):
    labels = np.eye(3, dtype=np.int64)[np.arange(len(files)) % 3]
    return MultiLabelSet(ids=[f"s{i}" for i in range(len(files))], labels=labels, class_names=["a", "b", "c"],
                         paths=list(files), root=str(root))


# ---------------------------------------------------------------- decoding


def test_png_jpeg_and_grayscale_decode_to_rgb(image_dir):
    ds = MultiLabelImageDataset(_table(image_dir, ["rgb.png", "gray.png", "photo.jpg"]))
    shapes = [(3, 20, 30), (3, 16, 16), (3, 24, 18)]
    for i, shape in enumerate(shapes):
        img, target, index = ds[i]
        assert tuple(img.shape) == shape and img.dtype == torch.float32
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
        assert target.dtype == torch.float32 and target.shape == (3,) and target[i % 3] == 1
        assert index == i and isinstance(index, int)
    gray = ds[1][0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    # png is lossless
    np.testing.assert_array_equal((ds[0][0] * 255).round().to(torch.uint8).numpy(), _rand_u8(3, 20, 30).numpy())


@pytest.mark.parametrize("name, reason", [("corrupt.png", "RuntimeError"), ("missing.png", "no such file"), ("empty.png", "empty file")])
def test_bad_file_raises_error_naming_it(image_dir, name, reason):
    ds = MultiLabelImageDataset(_table(image_dir, ["rgb.png", name]))
    with pytest.raises(ImageLoadError) as info:
        ds[1]
    assert name in str(info.value) and reason in str(info.value)
    assert info.value.path.endswith(name)
    assert isinstance(info.value, RuntimeError)
    again = pickle.loads(pickle.dumps(info.value))  # crosses DataLoader worker boundaries intact
    assert again.path == info.value.path and again.reason == info.value.reason


def test_directory_is_not_an_image(image_dir):
    (image_dir / "sub").mkdir()
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(image_dir / "sub")


def test_skip_corrupt_substitutes_next_good_sample(image_dir, caplog):
    ds = MultiLabelImageDataset(_table(image_dir, ["rgb.png", "corrupt.png", "missing.png", "photo.jpg"]), skip_corrupt=True)
    with caplog.at_level(logging.WARNING, logger="dbloss.data.images"):
        img, target, index = ds[1]
    assert index == 3 and tuple(img.shape) == (3, 24, 18)
    assert torch.equal(target, ds.labels[3])
    assert ds.num_skipped == 2
    assert "corrupt.png" in caplog.text and "missing.png" in caplog.text
    assert {p.split("/")[-1] for p in ds.bad_paths} == {"corrupt.png", "missing.png"}
    assert float(img.abs().sum()) > 0  # never a blank stand-in
    # wraps around
    ds2 = MultiLabelImageDataset(_table(image_dir, ["rgb.png", "corrupt.png"]), skip_corrupt=True)
    assert ds2[1][2] == 0


def test_skip_corrupt_with_nothing_loadable_raises(image_dir):
    ds = MultiLabelImageDataset(_table(image_dir, ["corrupt.png", "missing.png"]), skip_corrupt=True)
    with pytest.raises(ImageLoadError, match="no other sample"):
        ds[0]


def test_indexing_and_validation(image_dir):
    ds = MultiLabelImageDataset(_table(image_dir, ["rgb.png", "photo.jpg"]))
    assert len(ds) == 2 and ds.class_names == ["a", "b", "c"]
    assert ds[np.int64(1)][2] == 1
    assert ds[-1][2] == 1
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(TypeError):
        ds[0.5]
    no_paths = MultiLabelSet(ids=["a"], labels=np.array([[1]]), class_names=["x"])
    with pytest.raises(ValueError, match="image paths"):
        MultiLabelImageDataset(no_paths)
    with pytest.raises(TypeError):
        MultiLabelImageDataset(no_paths.labels)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        MultiLabelImageDataset(_table(image_dir, ["rgb.png"]), transform=3)  # type: ignore[arg-type]


def test_transform_gets_uint8_and_dataloader_batches(image_dir):
    seen = []

    def spy(img):
        seen.append(img.dtype)
        return eval_transform(32)(img)

    ds = MultiLabelImageDataset(_table(image_dir, ["rgb.png", "gray.png", "photo.jpg"]), transform=spy)
    images, targets, indices = next(iter(DataLoader(ds, batch_size=3)))
    assert seen == [torch.uint8] * 3
    assert images.shape == (3, 3, 32, 32) and targets.shape == (3, 3) and indices.tolist() == [0, 1, 2]


# ---------------------------------------------------------------- transforms

_LOW = [(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
_HIGH = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]


def _within_normalised_range(x):
    for c in range(3):
        assert float(x[..., c, :, :].min()) >= _LOW[c] - 1e-4
        assert float(x[..., c, :, :].max()) <= _HIGH[c] + 1e-4


def test_eval_transform_shapes_and_normalisation():
    t = eval_transform(224)
    out = t(_rand_u8(3, 375, 500))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    _within_normalised_range(out)
    white = t(torch.full((3, 10, 20), 255, dtype=torch.uint8))
    for c in range(3):
        assert torch.allclose(white[c], torch.tensor(_HIGH[c]), atol=1e-5)
    assert eval_transform((32, 48))(_rand_u8(2, 3, 60, 60)).shape == (2, 3, 32, 48)  # batches too
    assert torch.equal(t(_rand_u8(3, 50, 50)), t(_rand_u8(3, 50, 50)))  # deterministic


def test_train_transform_shapes_and_ranges():
    torch.manual_seed(0)
    t = train_transform(64)
    outs = [t(_rand_u8(3, 90, 120, seed=s)) for s in range(20)]
    for out in outs:
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32 and torch.isfinite(out).all()
        _within_normalised_range(out)
    assert not torch.equal(t(_rand_u8(3, 90, 120)), t(_rand_u8(3, 90, 120)))  # random
    plain = train_transform(64, photometric=False, min_crop=1.0, flip_p=0.0)
    assert torch.allclose(plain(_rand_u8(3, 90, 120)), eval_transform(64)(_rand_u8(3, 90, 120)))


def test_photometric_distortion_properties():
    torch.manual_seed(0)
    x = torch.rand(3, 16, 16)
    assert torch.equal(PhotoMetricDistortion(p=0.0, channel_swap=True)(x), x)
    full = PhotoMetricDistortion(p=1.0)
    for _ in range(20):
        y = full(x)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    u8 = _rand_u8(3, 16, 16)
    assert full(u8).dtype == torch.uint8
    # brightness only: a uniform shift of at most 32/255
    bright = PhotoMetricDistortion(p=1.0, contrast_range=(1, 1), saturation_range=(1, 1), hue_delta=0.0, channel_swap=False)
    mid = torch.full((3, 4, 4), 0.5)
    shift = bright(mid) - mid
    assert torch.allclose(shift, shift.flatten()[0].expand_as(shift)) and float(shift.abs().max()) <= 32 / 255 + 1e-6
    for bad in (dict(brightness_delta=-1), dict(contrast_range=(1.5, 0.5)), dict(hue_delta=0.6), dict(p=2)):
        with pytest.raises(ValueError):
            PhotoMetricDistortion(**bad)


def test_random_side_crop_keeps_at_least_min_side():
    torch.manual_seed(0)
    crop = RandomSideCrop(0.8)
    x = torch.zeros(3, 100, 50)
    for _ in range(50):
        h, w = crop(x).shape[-2:]
        assert 79 <= h <= 100 and 39 <= w <= 50
    assert RandomSideCrop(1.0)(x).shape == x.shape
    for bad in (dict(min_side=0.0), dict(min_side=1.5), dict(ratio_range=(2.0, 1.0)), dict(max_tries=0)):
        with pytest.raises(ValueError):
            RandomSideCrop(**bad)
    with pytest.raises(ValueError):
        train_transform(0)
    with pytest.raises(ValueError):
        train_transform(32, flip_p=1.5)
