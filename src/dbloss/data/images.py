"""A ``torch.utils.data.Dataset`` of images and multi-hot targets from a :class:`MultiLabelSet`."""

from __future__ import annotations

import logging
import operator
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from dbloss.data.table import MultiLabelSet

__all__ = ["ImageLoadError", "MultiLabelImageDataset", "load_image"]

logger = logging.getLogger(__name__)


class ImageLoadError(RuntimeError):
    """An image file could not be read or decoded.

    Attributes:
        path: the file.
        reason: what went wrong (the underlying error message).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when pickled across DataLoader workers
        return (type(self), (self.path, self.reason))


def load_image(path: str | Path) -> Tensor:
    """Read and decode an image file (JPEG, PNG, ...) as a uint8 RGB tensor.

    Grayscale and palette images are converted to 3 channels, alpha is dropped.

    Args:
        path: the image file.

    Returns:
        (3, H, W) uint8.

    Raises:
        ImageLoadError: naming the file, if it is missing, unreadable, empty or not a decodable image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        data = read_file(str(path))
        if data.numel() == 0:
            raise ImageLoadError(path, "empty file")
        img = decode_image(data, mode=ImageReadMode.RGB)
    except ImageLoadError:
        raise
    except (RuntimeError, OSError, ValueError) as e:
        raise ImageLoadError(path, f"{type(e).__name__}: {e}") from e
    if img.ndim != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
        raise ImageLoadError(path, f"decoded to an unexpected tensor {tuple(img.shape)} {img.dtype}")
    return img


class MultiLabelImageDataset(Dataset):
    """Images and multi-hot targets of a :class:`MultiLabelSet` with image paths.

    ``dataset[i]`` is ``(image, target, index)``:

    - ``image``: ``transform(uint8 (3, H, W) RGB tensor)`` if a transform is given
      (e.g. :func:`dbloss.data.transforms.train_transform`), else float32 ``(3, H, W)``
      in [0, 1];
    - ``target``: float32 ``(C,)``, the label row;
    - ``index``: int, the row of ``table`` that the image and target come from (so that
      predictions can be matched to ids: ``table.ids[index]``).

    A missing or corrupt file raises :class:`ImageLoadError` naming it. With
    ``skip_corrupt=True`` a warning naming it is logged instead, :attr:`num_skipped` is
    incremented, and the next loadable row is returned (``i + 1``, ``i + 2``, ... wrapping
    around); its own ``index`` is returned, so target and index stay consistent.
    The substitution is deterministic, never a blank image, and if no row can be loaded
    :class:`ImageLoadError` is raised. Each ``DataLoader`` worker holds its own copy of the
    dataset, so :attr:`num_skipped` and :attr:`bad_paths` count what this process saw.

    Args:
        table: the samples; ``table.paths`` must be set (resolved with ``table.root``).
        transform: applied to the uint8 image. Default None.
        skip_corrupt: substitute unloadable images instead of raising. Default False.

    >>> import numpy as np, tempfile, os
    >>> from torchvision.io import write_png
    >>> d = tempfile.mkdtemp()
    >>> _ = write_png(torch.zeros(3, 4, 5, dtype=torch.uint8), os.path.join(d, "a.png"))
    >>> table = MultiLabelSet(["a"], np.array([[1, 0]]), ["x", "y"], paths=["a.png"], root=d)
    >>> img, target, index = MultiLabelImageDataset(table)[0]
    >>> img.shape, img.dtype, target.tolist(), index
    (torch.Size([3, 4, 5]), torch.float32, [1.0, 0.0], 0)
    """

    def __init__(
        self,
        table: MultiLabelSet,
        transform: Callable[[Tensor], Tensor] | None = None,
        *,
        skip_corrupt: bool = False,
    ) -> None:
        if not isinstance(table, MultiLabelSet):
            raise TypeError(f"Expected `table` to be a MultiLabelSet, but got {type(table).__name__}")
        if table.paths is None:
            raise ValueError("Expected `table` to have image paths (table.paths), but it has none")
        if transform is not None and not callable(transform):
            raise TypeError(f"Expected `transform` to be callable or None, but got {type(transform).__name__}")
        self.table = table
        self.transform = transform
        self.skip_corrupt = bool(skip_corrupt)
        self.targets = torch.as_tensor(table.labels, dtype=torch.float32)
        #: number of substitutions made by this process (``skip_corrupt=True`` only).
        self.num_skipped = 0
        #: paths that failed to load in this process.
        self.bad_paths: set[str] = set()

    def __len__(self) -> int:
        return len(self.table)

    @property
    def class_names(self) -> list[str]:
        return self.table.class_names

    @property
    def labels(self) -> Tensor:
        """(N, C) float32 targets of all samples (no image is read)."""
        return self.targets

    def _load(self, i: int) -> Tensor:
        img = load_image(self.table.image_path(i))
        if self.transform is None:
            return img.to(torch.float32).div_(255.0)
        return self.transform(img)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        n = len(self)
        try:
            i = operator.index(i)  # int, numpy integer, 0-d integer tensor
        except TypeError:
            raise TypeError(f"Expected an integer index, but got {type(i).__name__}") from None
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i %= n
        if not self.skip_corrupt:
            return self._load(i), self.targets[i].clone(), i
        first_error: ImageLoadError | None = None
        for step in range(n):
            j = (i + step) % n
            try:
                return self._load(j), self.targets[j].clone(), j
            except ImageLoadError as e:
                self.num_skipped += 1
                self.bad_paths.add(e.path)
                logger.warning("skipping sample %d: %s", j, e)
                first_error = first_error or e
        assert first_error is not None
        raise ImageLoadError(first_error.path, f"{first_error.reason} (and no other sample of the {n} could be loaded)")
