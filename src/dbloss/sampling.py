"""Class-aware sampling for long-tailed multi-label data (distributed-aware).

The class-aware sampler of Shen et al. (ECCV 2016), as used by the Distribution-Balanced loss
paper (Wu et al., ECCV 2020, arXiv 2007.09654) for its re-sampling baselines and for DB loss:
pick a class, then draw images that contain it, so that every class is picked equally often.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from dbloss.labels import label_masks

__all__ = ["ClassAwareSampler"]

# Below this many items a batch of permutations is drawn as one argsort of random keys (cheap
# for short rows); from it on, one torch.randperm per permutation (cheap for long ones).
_RANDPERM_MIN = 32


def _cyclic_permutations(items: torch.Tensor, length: int, g: torch.Generator) -> torch.Tensor:
    """The first ``length`` draws of a random cycle over ``items``: permutations back to back."""
    n = items.numel()
    cycles = math.ceil(length / n)
    if n == 1:
        return items.expand(length).clone()
    if n < _RANDPERM_MIN:
        # float64 keys: a tie (broken by position) has probability ~n^2 / 2^53 per row
        order = torch.rand(cycles, n, generator=g, dtype=torch.float64).argsort(dim=1).reshape(-1)
    else:
        order = torch.cat([torch.randperm(n, generator=g) for _ in range(cycles)])
    return items[order[:length]]


class ClassAwareSampler(Sampler[int]):
    """Class-aware sampler over an (N, C) {0, 1} label matrix.

    Follows the original DB code's ``ClassAwareSampler`` (``mllt/datasets/loader/sampler.py``):

    - classes are picked by cycling through the class list, reshuffled each time it is
      exhausted (a "random cycle" iterator), so every class is picked once per C picks;
    - for each class pick, ``num_samples_cls`` consecutive images are drawn from that class's
      image list, itself cycled and reshuffled each time it is exhausted;
    - one epoch has ``int(max_k n_k * C / reduce)`` indices, ``n_k`` the images of class k
      (the original's rounding); the last class pick may be cut short.

    Unlike the original, no global random state is touched: every epoch's sequence is drawn
    from a private ``torch.Generator`` seeded with ``seed + epoch`` when iteration starts (the
    class and image cycles restart each epoch), so :meth:`set_epoch` changes the order and the
    same (seed, epoch) always gives the same sequence.

    Distributed training: every rank computes the same global sequence and takes the strided
    slice ``rank::num_replicas`` (as :class:`torch.utils.data.DistributedSampler`), after padding
    the sequence by repeating its start up to a multiple of ``num_replicas`` or, with
    ``drop_last``, dropping its tail. ``len(sampler)`` is the per-rank length.

    A class without any image cannot be drawn: the constructor raises ``ValueError`` naming it
    (drop such classes from the label matrix passed here, or use another sampler).

    Args:
        labels: (N, C) {0, 1} label matrix (tensor or array).
        num_samples_cls: consecutive images drawn per class pick. Default 1.
        reduce: the epoch length divisor. Default 4.
        seed: base seed; epoch e uses ``seed + e``. Default 0.
        num_replicas: number of ranks; default: the ``torch.distributed`` world size when a
            process group is initialised, else 1.
        rank: this rank; default: the ``torch.distributed`` rank when initialised, else 0.
        drop_last: drop the global tail instead of padding. Default False.

    >>> labels = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 1]])
    >>> sampler = ClassAwareSampler(labels, reduce=1)
    >>> len(sampler), set(sampler) <= {0, 1, 2, 3}
    (8, True)
    >>> indices, classes = sampler.sample_with_classes()  # the class each index was drawn for
    >>> bool((labels[indices, classes] == 1).all())
    True
    """

    def __init__(
        self,
        labels: Any,
        *,
        num_samples_cls: int = 1,
        reduce: float = 4,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        pos = label_masks(labels, name="labels", allow_empty=False)[0].cpu().numpy()
        if isinstance(num_samples_cls, bool) or not isinstance(num_samples_cls, int) or num_samples_cls < 1:
            raise ValueError(f"Expected `num_samples_cls` to be a positive integer, but got {num_samples_cls!r}")
        if isinstance(reduce, bool) or not isinstance(reduce, (int, float)) or not reduce > 0 or math.isinf(reduce):
            raise ValueError(f"Expected `reduce` to be a positive number, but got {reduce!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Expected `seed` to be an int, but got {seed!r}")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"Expected `num_replicas` to be a positive integer, but got {num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"Expected `rank` in [0, {num_replicas - 1}], but got {rank!r}")

        class_freq = pos.sum(0, dtype=np.int64)
        empty = np.flatnonzero(class_freq == 0).tolist()
        if empty:
            shown = ", ".join(str(k) for k in empty[:20]) + (", ..." if len(empty) > 20 else "")
            raise ValueError(
                f"A class-aware sampler cannot draw classes without samples, but {len(empty)} class(es) "
                f"have none: [{shown}]"
            )
        num_classes = pos.shape[1]
        total = int(class_freq.max() * num_classes / reduce)  # the original's rounding
        if total < 1:
            raise ValueError(
                f"An epoch of int(max_k n_k * C / reduce) = int({int(class_freq.max())} * {num_classes} / {reduce}) "
                f"= 0 samples; lower `reduce`"
            )
        if drop_last and total < num_replicas:
            raise ValueError(f"drop_last with {num_replicas} replicas leaves no sample of the {total} per epoch")

        # images of each class, in CSR form: class k owns _images[_offsets[k]:_offsets[k + 1]]
        img_idx, cls_idx = np.nonzero(pos)  # row-major; a stable sort by class keeps image order
        self._images = torch.from_numpy(img_idx[np.argsort(cls_idx, kind="stable")].astype(np.int64))
        self._offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(class_freq)]).astype(np.int64))
        self.num_classes = num_classes
        self.num_samples_cls = num_samples_cls
        self.reduce = reduce
        self.seed = seed
        self.epoch = 0
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.total_samples = total  # the global (unpadded) epoch length
        if drop_last:
            self.num_samples = total // num_replicas
        else:
            self.num_samples = math.ceil(total / num_replicas)

    # ------------------------------------------------------------------ epochs and state

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order (seed + epoch) at the next iteration."""
        self.epoch = int(epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        try:
            self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        except KeyError as e:
            raise ValueError(f"Sampler state is missing the field {e.args[0]!r}") from None

    def __len__(self) -> int:
        return self.num_samples

    # ------------------------------------------------------------------ the sequence

    def _global_sequence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, picked classes) of this epoch's global sequence, each (total_samples,) int64."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        c, m = self.num_classes, self.num_samples_cls
        picks = math.ceil(self.total_samples / m)
        rounds = math.ceil(picks / c)
        # the class cycle: `rounds` independent permutations of the classes, back to back
        class_seq = _cyclic_permutations(torch.arange(c), rounds * c, g)
        # In round r a class is picked exactly once and takes draws [r*m, (r+1)*m) of its own
        # image cycle; so each class needs rounds*m draws of a random cycle over its images
        # (a few vectorised calls per class, not one per draw).
        draws = rounds * m
        streams = torch.empty(c, draws, dtype=torch.int64)
        for k in range(c):
            streams[k] = _cyclic_permutations(self._images[self._offsets[k] : self._offsets[k + 1]], draws, g)
        # draw q belongs to pick p = q // m (round p // c, class class_seq[p]), t = q % m
        pick_class = class_seq[:picks]
        r = torch.arange(picks) // c
        col = r[:, None] * m + torch.arange(m)  # (picks, m): positions in the class's stream
        indices = streams[pick_class[:, None], col].reshape(-1)[: self.total_samples]
        classes = pick_class.repeat_interleave(m)[: self.total_samples]
        return indices, classes

    def _rank_slice(self, x: torch.Tensor) -> torch.Tensor:
        total_size = self.num_samples * self.num_replicas
        if total_size > x.numel():  # pad by repeating the start (possibly several times)
            reps = math.ceil(total_size / x.numel())
            x = x.repeat(reps)
        x = x[:total_size]
        return x[self.rank : total_size : self.num_replicas]

    def sample_with_classes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's epoch: ``(indices, classes)``, each (len(self),) int64.

        ``classes[i]`` is the class whose pick drew ``indices[i]`` (the image is positive for it).
        Same order as iterating the sampler.
        """
        indices, classes = self._global_sequence()
        return self._rank_slice(indices), self._rank_slice(classes)

    def __iter__(self) -> Iterator[int]:
        indices = self._rank_slice(self._global_sequence()[0])
        for chunk in indices.split(1 << 16):
            yield from chunk.tolist()
