"""Image transforms of the paper's recipe, built on ``torchvision.transforms.v2``.

The original training pipeline (Wu et al., ECCV 2020; mmdet-style ``CustomDataset`` with
``extra_aug`` in its VOC/COCO configs) runs, per training image:

1. ``PhotoMetricDistortion`` on the decoded image (0-255 float scale): additive brightness
   ``U(-32, 32)``; a multiplicative "contrast" ``U(0.5, 1.5)`` either before or after the HSV
   steps (coin flip); saturation ``x U(0.5, 1.5)``; hue ``+ U(-18, 18)`` degrees; a random
   channel permutation. Each step is applied with probability 0.5.
2. ``RandomCrop(min_crop_size=0.8)``: crop width ``U(0.8 w, w)`` and height ``U(0.8 h, h)``
   drawn independently, redrawn (up to 50 times) while the crop's ``h / w`` is outside
   [0.5, 2], at a uniformly random position.
3. Resize to 224 x 224 without keeping the aspect ratio (``resize_keep_ratio=False``),
   ImageNet normalisation, horizontal flip with probability 0.5.

Evaluation is the resize and normalisation only.

Here the photometric distortion runs *after* crop and resize (on the 224 x 224 image rather
than the full-size one): every step is per-pixel, so this only changes interpolation
rounding, and it is several times cheaper. Pixel values are kept in [0, 1] after each step
(the original let them leave 0-255 between steps). Resizing uses antialiasing.

All transforms take ``uint8`` image tensors ``(..., 3, H, W)`` as decoded by
``torchvision.io.decode_image`` and return ``float32`` ``(..., 3, size, size)``. Randomness
comes from torch's global generator, which ``DataLoader`` seeds per worker.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PhotoMetricDistortion",
    "RandomSideCrop",
    "eval_transform",
    "train_transform",
]

#: ImageNet channel means (RGB, [0, 1] scale); the original's 123.675, 116.28, 103.53 / 255.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet channel standard deviations (RGB, [0, 1] scale); the original's 58.395, 57.12, 57.375 / 255.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check_image(img: Tensor) -> None:
    if not isinstance(img, Tensor):
        raise TypeError(f"Expected an image tensor of shape (..., C, H, W), but got {type(img).__name__}")
    if img.ndim < 3:
        raise ValueError(f"Expected an image tensor of shape (..., C, H, W), but got shape {tuple(img.shape)}")


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def _coin(p: float) -> bool:
    return float(torch.rand(())) < p


class PhotoMetricDistortion(nn.Module):
    """The original's photometric distortion, on tensors in torchvision's value conventions.

    Each step below is applied with probability ``p`` (0.5), in this order:
    brightness (adds ``U(-brightness_delta, brightness_delta)``); gain, before or after the
    HSV steps with equal chance (multiplies by ``U(*contrast_range)``: the original calls
    this "contrast", but it scales pixel values rather than stretching them about the mean,
    i.e. it is ``adjust_brightness``); saturation (``adjust_saturation`` by
    ``U(*saturation_range)``); hue (``adjust_hue`` by ``U(-hue_delta, hue_delta)``, in turns);
    random channel permutation (if ``channel_swap``). Values are clamped to the valid range
    after each step.

    Args:
        brightness_delta: on the [0, 1] scale. Default 32 / 255.
        contrast_range: gain range. Default (0.5, 1.5).
        saturation_range: Default (0.5, 1.5).
        hue_delta: in turns (``adjust_hue``'s unit, 1 = 360 degrees). Default 18 / 360.
        p: probability of each step. Default 0.5.
        channel_swap: include the random channel permutation. Default True (as the original).

    Input: an image tensor ``(..., C, H, W)``, float in [0, 1] or uint8; output the same dtype.

    >>> out = PhotoMetricDistortion()(torch.rand(3, 8, 8))
    >>> out.shape, bool(out.min() >= 0 and out.max() <= 1)
    (torch.Size([3, 8, 8]), True)
    """

    def __init__(
        self,
        brightness_delta: float = 32 / 255,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18 / 360,
        p: float = 0.5,
        channel_swap: bool = True,
    ) -> None:
        super().__init__()
        if brightness_delta < 0:
            raise ValueError(f"Expected `brightness_delta` >= 0, but got {brightness_delta}")
        for name, (lo, hi) in (("contrast_range", contrast_range), ("saturation_range", saturation_range)):
            if not (0 <= lo <= hi):
                raise ValueError(f"Expected `{name}` = (low, high) with 0 <= low <= high, but got {(lo, hi)}")
        if not (0 <= hue_delta <= 0.5):
            raise ValueError(f"Expected `hue_delta` in [0, 0.5] turns, but got {hue_delta}")
        if not (0 <= p <= 1):
            raise ValueError(f"Expected `p` in [0, 1], but got {p}")
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = (float(contrast_range[0]), float(contrast_range[1]))
        self.saturation_range = (float(saturation_range[0]), float(saturation_range[1]))
        self.hue_delta = float(hue_delta)
        self.p = float(p)
        self.channel_swap = bool(channel_swap)

    def forward(self, img: Tensor) -> Tensor:
        _check_image(img)
        dtype = img.dtype
        x = F.to_dtype(img, torch.float32, scale=True) if not img.is_floating_point() else img
        if _coin(self.p):
            x = (x + _uniform(-self.brightness_delta, self.brightness_delta)).clamp_(0.0, 1.0)
        gain_first = _coin(0.5)
        if gain_first and _coin(self.p):
            x = F.adjust_brightness(x, _uniform(*self.contrast_range))
        if _coin(self.p):
            x = F.adjust_saturation(x, _uniform(*self.saturation_range))
        if _coin(self.p):
            x = F.adjust_hue(x, _uniform(-self.hue_delta, self.hue_delta))
        if not gain_first and _coin(self.p):
            x = F.adjust_brightness(x, _uniform(*self.contrast_range))
        if self.channel_swap and _coin(self.p):
            x = x[..., torch.randperm(x.shape[-3]), :, :]
        return F.to_dtype(x, dtype, scale=True) if x.dtype != dtype else x

    def extra_repr(self) -> str:
        return (
            f"brightness_delta={self.brightness_delta:.4f}, contrast_range={self.contrast_range}, "
            f"saturation_range={self.saturation_range}, hue_delta={self.hue_delta:.4f}, p={self.p}, "
            f"channel_swap={self.channel_swap}"
        )


class RandomSideCrop(nn.Module):
    """The original's ``RandomCrop``: keep at least ``min_side`` of each side.

    Crop width ``U(min_side * W, W)`` and height ``U(min_side * H, H)`` are drawn
    independently and redrawn (up to ``max_tries`` times) while ``h / w`` falls outside
    ``ratio_range``; the crop's corner is uniform over the valid positions. If no draw is
    valid the image is returned uncropped.

    Args:
        min_side: smallest kept fraction of each side, in (0, 1]. Default 0.8.
        ratio_range: allowed crop height / width. Default (0.5, 2.0).
        max_tries: Default 50.

    Input: ``(..., C, H, W)``; output ``(..., C, h, w)``, same dtype.

    >>> RandomSideCrop(1.0)(torch.zeros(3, 10, 20)).shape
    torch.Size([3, 10, 20])
    """

    def __init__(self, min_side: float = 0.8, ratio_range: tuple[float, float] = (0.5, 2.0), max_tries: int = 50) -> None:
        super().__init__()
        if not (0 < min_side <= 1):
            raise ValueError(f"Expected `min_side` in (0, 1], but got {min_side}")
        if not (0 < ratio_range[0] <= ratio_range[1]):
            raise ValueError(f"Expected `ratio_range` = (low, high) with 0 < low <= high, but got {ratio_range}")
        if max_tries < 1:
            raise ValueError(f"Expected `max_tries` >= 1, but got {max_tries}")
        self.min_side = float(min_side)
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.max_tries = int(max_tries)

    def forward(self, img: Tensor) -> Tensor:
        _check_image(img)
        h, w = img.shape[-2:]
        for _ in range(self.max_tries):
            new_w = _uniform(self.min_side * w, w)
            new_h = _uniform(self.min_side * h, h)
            if not (self.ratio_range[0] <= new_h / new_w <= self.ratio_range[1]):
                continue
            left = _uniform(0.0, w - new_w)
            top = _uniform(0.0, h - new_h)
            x0, y0 = int(left), int(top)
            x1, y1 = min(w, int(left + new_w)), min(h, int(top + new_h))
            return F.crop(img, y0, x0, max(1, y1 - y0), max(1, x1 - x0))
        return img

    def extra_repr(self) -> str:
        return f"min_side={self.min_side}, ratio_range={self.ratio_range}, max_tries={self.max_tries}"


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"Expected `size` to be a positive int or (height, width), but got {size!r}")
    return pair  # type: ignore[return-value]


def train_transform(
    size: int | tuple[int, int] = 224,
    *,
    min_crop: float = 0.8,
    flip_p: float = 0.5,
    photometric: bool = True,
    channel_swap: bool = True,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> v2.Compose:
    """The paper's training pipeline: crop, resize (aspect not kept), photometric distortion, flip, normalise.

    Steps: :class:`RandomSideCrop` (``min_crop``, 0.8) -> ``Resize((size, size))`` ->
    float32 in [0, 1] -> :class:`PhotoMetricDistortion` (if ``photometric``) ->
    ``RandomHorizontalFlip(flip_p)`` -> ``Normalize(mean, std)``. See the module docstring
    for the original's order and the reasons for the differences.

    Args:
        size: output side (or (height, width)). Default 224.
        min_crop: smallest kept fraction of each side. Default 0.8.
        flip_p: horizontal flip probability. Default 0.5.
        photometric: apply :class:`PhotoMetricDistortion`. Default True.
        channel_swap: include its random channel permutation (as the original). Default True.
            Turn it off where colour identifies a class.
        mean: normalisation mean (RGB, [0, 1] scale). Default ImageNet's.
        std: normalisation standard deviation (RGB, [0, 1] scale). Default ImageNet's.

    Returns:
        A callable taking a uint8 ``(..., 3, H, W)`` tensor, returning float32 ``(..., 3, size, size)``.

    >>> t = train_transform(32)
    >>> out = t(torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8))
    >>> out.shape, out.dtype
    (torch.Size([3, 32, 32]), torch.float32)
    """
    hw = _size_pair(size)
    if not (0 <= flip_p <= 1):
        raise ValueError(f"Expected `flip_p` in [0, 1], but got {flip_p}")
    steps: list[nn.Module] = [
        RandomSideCrop(min_crop),
        v2.Resize(hw, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion(channel_swap=channel_swap))
    steps += [v2.RandomHorizontalFlip(flip_p), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


def eval_transform(
    size: int | tuple[int, int] = 224,
    *,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> v2.Compose:
    """The paper's evaluation pipeline: resize to ``size`` x ``size`` (aspect not kept) and normalise.

    Args:
        size: output side (or (height, width)). Default 224.
        mean: normalisation mean (RGB, [0, 1] scale). Default ImageNet's.
        std: normalisation standard deviation (RGB, [0, 1] scale). Default ImageNet's.

    Returns:
        A callable taking a uint8 ``(..., 3, H, W)`` tensor, returning float32 ``(..., 3, size, size)``.

    >>> out = eval_transform(16)(torch.full((3, 20, 30), 255, dtype=torch.uint8))
    >>> out.shape, round(float(out[0, 0, 0]), 3)
    (torch.Size([3, 16, 16]), 2.249)
    """
    hw = _size_pair(size)
    return v2.Compose(
        [v2.Resize(hw, antialias=True), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    )

