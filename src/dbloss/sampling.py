"""Re-sampling for long-tailed multi-label data (distributed-aware).

* :class:`ClassAwareSampler`: the class-aware sampler of Shen et al. (ECCV 2016), as used by the
  Distribution-Balanced loss paper (Wu et al., ECCV 2020, arXiv 2007.09654) for its re-sampling
  baselines and for DB loss: pick a class, then draw images that contain it, so that every class
  is picked equally often.
* :class:`ReversedSampler`: BBN's reversed sampler (Zhou et al., CVPR 2020) in multi-label form:
  each draw picks class k with probability proportional to 1 / n_k, then an image that contains it.

Both draw each epoch's global sequence from a private generator seeded ``seed + epoch`` and give
every rank of a distributed run a disjoint, equally long strided slice of it.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from dbloss.labels import label_masks

__all__ = ["ClassAwareSampler", "ReversedSampler"]

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


def _replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``: the given ones, checked, or the ``torch.distributed`` group's (1, 0 without one)."""
    if num_replicas is None:
        num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"Expected `num_replicas` to be a positive integer, but got {num_replicas!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise ValueError(f"Expected `rank` in [0, {num_replicas - 1}], but got {rank!r}")
    return num_replicas, rank


class _ClassSampler(Sampler[int]):
    """What the class-based samplers share: the images of each class (CSR form), the epoch and
    seed, and the distributed slicing of a global sequence (:meth:`_global_sequence`, per subclass).

    A class without any image cannot be drawn: the constructor raises ``ValueError`` naming it.
    """

    _kind = "class-based sampler"

    def __init__(self, labels: Any, *, seed: int, num_replicas: int | None, rank: int | None,
                 drop_last: bool) -> None:
        pos = label_masks(labels, name="labels", allow_empty=False)[0].cpu().numpy()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Expected `seed` to be an int, but got {seed!r}")
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        class_freq = pos.sum(0, dtype=np.int64)
        empty = np.flatnonzero(class_freq == 0).tolist()
        if empty:
            shown = ", ".join(str(k) for k in empty[:20]) + (", ..." if len(empty) > 20 else "")
            raise ValueError(
                f"A {self._kind} cannot draw classes without samples, but {len(empty)} class(es) "
                f"have none: [{shown}]"
            )
        # images of each class, in CSR form: class k owns _images[_offsets[k]:_offsets[k + 1]]
        img_idx, cls_idx = np.nonzero(pos)  # row-major; a stable sort by class keeps image order
        self._images = torch.from_numpy(img_idx[np.argsort(cls_idx, kind="stable")].astype(np.int64))
        self._offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(class_freq)]).astype(np.int64))
        self.class_freq = torch.from_numpy(class_freq)
        self.num_classes = pos.shape[1]
        self.num_images = pos.shape[0]
        self.seed = seed
        self.epoch = 0
        self.drop_last = drop_last

    def _set_length(self, total: int) -> None:
        """The global (unpadded) epoch length and, from it, the per-rank length."""
        if self.drop_last and total < self.num_replicas:
            raise ValueError(f"drop_last with {self.num_replicas} replicas leaves no sample of the {total} per epoch")
        self.total_samples = total
        self.num_samples = total // self.num_replicas if self.drop_last else math.ceil(total / self.num_replicas)

    def _class_images(self, k: int) -> torch.Tensor:
        return self._images[self._offsets[k] : self._offsets[k + 1]]

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

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return g

    def _global_sequence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, picked classes) of this epoch's global sequence, each (total_samples,) int64."""
        raise NotImplementedError

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


class ClassAwareSampler(_ClassSampler):
    """Class-aware sampler over an (N, C) {0, 1} label matrix.

    Follows the original DB code's ``ClassAwareSampler`` (``mllt/datasets/loader/sampler.py``):

    - classes are picked by cycling through the class list, reshuffled each time it is
      exhausted (a "random cycle" iterator), so every class is picked once per C picks;
    - for each class pick, ``num_samples_cls`` consecutive images are drawn from that class's
      image list, itself cycled and reshuffled each time it is exhausted;
    - one epoch has ``int(max_k n_k * C / reduce)`` indices, ``n_k`` the images of class k
      (the original's rounding), or ``epoch_length`` when given; the last class pick may be cut short.

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
        epoch_length: indices per epoch (all ranks) instead of ``int(max_k n_k * C / reduce)``
            (BBN's re-balancing branch pairs one draw with each sample of the conventional epoch).

    >>> labels = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 1]])
    >>> sampler = ClassAwareSampler(labels, reduce=1)
    >>> len(sampler), set(sampler) <= {0, 1, 2, 3}
    (8, True)
    >>> indices, classes = sampler.sample_with_classes()  # the class each index was drawn for
    >>> bool((labels[indices, classes] == 1).all())
    True
    """

    _kind = "class-aware sampler"

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
        epoch_length: int | None = None,
    ) -> None:
        if isinstance(num_samples_cls, bool) or not isinstance(num_samples_cls, int) or num_samples_cls < 1:
            raise ValueError(f"Expected `num_samples_cls` to be a positive integer, but got {num_samples_cls!r}")
        if isinstance(reduce, bool) or not isinstance(reduce, (int, float)) or not reduce > 0 or math.isinf(reduce):
            raise ValueError(f"Expected `reduce` to be a positive number, but got {reduce!r}")
        super().__init__(labels, seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        if epoch_length is None:
            total = int(int(self.class_freq.max()) * self.num_classes / reduce)  # the original's rounding
            if total < 1:
                raise ValueError(
                    f"An epoch of int(max_k n_k * C / reduce) = int({int(self.class_freq.max())} * {self.num_classes} "
                    f"/ {reduce}) = 0 samples; lower `reduce`"
                )
        else:
            total = _epoch_length(epoch_length)
        self.num_samples_cls = num_samples_cls
        self.reduce = reduce
        self._set_length(total)

    def _global_sequence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, picked classes) of this epoch's global sequence, each (total_samples,) int64."""
        g = self._generator()
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
            streams[k] = _cyclic_permutations(self._class_images(k), draws, g)
        # draw q belongs to pick p = q // m (round p // c, class class_seq[p]), t = q % m
        pick_class = class_seq[:picks]
        r = torch.arange(picks) // c
        col = r[:, None] * m + torch.arange(m)  # (picks, m): positions in the class's stream
        indices = streams[pick_class[:, None], col].reshape(-1)[: self.total_samples]
        classes = pick_class.repeat_interleave(m)[: self.total_samples]
        return indices, classes


def _epoch_length(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected `epoch_length` to be a positive integer, but got {value!r}")
    return value


class ReversedSampler(_ClassSampler):
    """BBN's reversed sampler over an (N, C) {0, 1} label matrix (Zhou et al., CVPR 2020).

    BBN's re-balancing branch draws class k with probability ``w_k / sum_j w_j``, ``w_k = n_max / n_k``
    (the reverse of the data's class distribution), then an image of that class. In multi-label
    form the image is one that contains class k (it may contain others: co-occurring head
    classes come along, as under class-aware sampling). Here:

    - each draw picks a class independently, ``P(k) = (1 / n_k) / sum_j (1 / n_j)``;
    - the picks of class k take the next images of that class's image list, cycled and
      reshuffled each time it is exhausted (as :class:`ClassAwareSampler`; BBN draws them
      with replacement);
    - one epoch has ``epoch_length`` indices (default N, the data's size: BBN pairs every
      sample of the conventional branch's epoch with one reversed draw).

    Randomness, ``set_epoch`` and the distributed slicing are :class:`ClassAwareSampler`'s:
    a private generator seeded ``seed + epoch``, every rank a strided slice of the same global
    sequence (padded by repeating its start, or its tail dropped with ``drop_last``).

    Args:
        labels: (N, C) {0, 1} label matrix (tensor or array); every class needs an image.
        epoch_length: indices per epoch, all ranks together. Default N.
        seed: as :class:`ClassAwareSampler`.
        num_replicas: as :class:`ClassAwareSampler`.
        rank: as :class:`ClassAwareSampler`.
        drop_last: as :class:`ClassAwareSampler`.

    >>> labels = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 1]])
    >>> sampler = ReversedSampler(labels, epoch_length=1000)
    >>> indices, classes = sampler.sample_with_classes()
    >>> bool((labels[indices, classes] == 1).all()), round(float((classes == 1).float().mean()), 1)  # P(1) = 0.8
    (True, 0.8)
    """

    _kind = "reversed sampler"

    def __init__(
        self,
        labels: Any,
        *,
        epoch_length: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__(labels, seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        inverse = 1.0 / self.class_freq.double()
        self.class_probs = inverse / inverse.sum()  # (C,) float64: P(k) proportional to 1 / n_k
        self._set_length(self.num_images if epoch_length is None else _epoch_length(epoch_length))

    def _global_sequence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, picked classes) of this epoch's global sequence, each (total_samples,) int64."""
        g = self._generator()
        classes = torch.multinomial(self.class_probs, self.total_samples, replacement=True, generator=g)
        counts = torch.bincount(classes, minlength=self.num_classes).tolist()
        # the j-th pick of class k takes draw j of its image cycle: streams in class order, scattered
        # to the picks' positions sorted (stably) by class
        streams = [_cyclic_permutations(self._class_images(k), n, g) for k, n in enumerate(counts) if n]
        order = torch.argsort(classes, stable=True)
        indices = torch.empty_like(classes)
        indices[order] = torch.cat(streams)
        return indices, classes
