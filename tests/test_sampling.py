"""Tests of dbloss.sampling: ClassAwareSampler and BBN's ReversedSampler."""

from __future__ import annotations

import doctest
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import dbloss.sampling as sampling_module
from dbloss.sampling import ClassAwareSampler, ReversedSampler


def _voc_labels(voc_coco_mlt_dir: Path) -> np.ndarray:
    path = voc_coco_mlt_dir / "voc_mlt_train_labels.csv"
    labels = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(1, 21), dtype=np.int64)
    assert labels.shape[1] == 20
    return labels


def _small_labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 7)) < np.array([0.6, 0.4, 0.2, 0.1, 0.05, 0.03, 0.02])).astype(np.int64)
    labels[np.arange(7), np.arange(7)] = 1  # every class has an image
    return labels


def test_voc_mlt_classes_are_picked_equally(voc_coco_mlt_dir: Path) -> None:
    labels = _voc_labels(voc_coco_mlt_dir)
    freq = labels.sum(0)
    sampler = ClassAwareSampler(labels)
    assert len(sampler) == int(freq.max() * 20 / 4)
    indices, classes = sampler.sample_with_classes()
    assert len(indices) == len(sampler) == len(list(sampler))
    assert indices.tolist() == list(sampler)
    # every drawn image is positive for the class whose pick drew it
    assert (torch.from_numpy(labels)[indices, classes] == 1).all()
    picks = torch.bincount(classes, minlength=20)
    assert int(picks.max() - picks.min()) <= 1  # the class cycle: each class once per 20 picks
    # images drawn per class, an image counting for each of its labels: the tail is no longer rare
    drawn = torch.from_numpy(labels)[indices].sum(0).double()
    assert drawn.min() >= picks.min()
    original_share = freq.min() / freq.max()
    assert drawn.min() / drawn.max() > 5 * original_share


@pytest.mark.parametrize("num_samples_cls", [1, 3])
def test_random_cycles_over_classes_and_images(num_samples_cls: int) -> None:
    labels = _small_labels()
    c = labels.shape[1]
    sampler = ClassAwareSampler(labels, num_samples_cls=num_samples_cls, reduce=0.5, seed=3)
    indices, classes = sampler.sample_with_classes()
    m = num_samples_cls
    assert len(indices) == int(labels.sum(0).max() * c / 0.5)
    # class picks come in runs of m; consecutive groups of C picks are permutations of the classes
    picks = classes[::m]
    assert (classes == picks.repeat_interleave(m)[: len(classes)]).all()
    full = len(picks) // c * c
    rounds = picks[:full].reshape(-1, c)
    assert (rounds.sort(dim=1).values == torch.arange(c)).all()
    assert len({tuple(r) for r in rounds.tolist()}) > 1  # reshuffled when exhausted
    # each class's draws, in order, cycle through reshuffled permutations of its images
    for k in range(c):
        own = indices[classes == k]
        members = np.flatnonzero(labels[:, k])
        n_k = len(members)
        assert (torch.from_numpy(labels)[own, k] == 1).all()
        whole = len(own) // n_k * n_k
        for cycle in own[:whole].reshape(-1, n_k):
            assert sorted(cycle.tolist()) == members.tolist()


def test_length_rounding_and_truncated_last_pick() -> None:
    labels = np.eye(3, dtype=np.int64).repeat([5, 2, 1], axis=0)  # n_k = 5, 2, 1
    assert len(ClassAwareSampler(labels)) == int(5 * 3 / 4) == 3
    s = ClassAwareSampler(labels, num_samples_cls=4, reduce=1)
    indices, classes = s.sample_with_classes()
    assert len(indices) == 15 and len(classes) == 15  # 4 picks of 4 draws, the last cut to 3
    with pytest.raises(ValueError, match="reduce"):
        ClassAwareSampler(np.ones((1, 1), int))  # int(1 * 1 / 4) = 0 samples


@pytest.mark.parametrize("num_replicas", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_partition_the_global_sequence(num_replicas: int, drop_last: bool) -> None:
    labels = _small_labels()
    single = ClassAwareSampler(labels, seed=5, reduce=1.9)
    single.set_epoch(2)
    global_seq = list(single)
    total = len(global_seq)
    assert total % num_replicas != 0  # so that padding / dropping is exercised
    per_rank = total // num_replicas if drop_last else math.ceil(total / num_replicas)
    shards = []
    for rank in range(num_replicas):
        s = ClassAwareSampler(labels, seed=5, reduce=1.9, num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        s.set_epoch(2)
        shard = list(s)
        assert len(shard) == len(s) == per_rank
        shards.append(shard)
    interleaved = [shards[i % num_replicas][i // num_replicas] for i in range(per_rank * num_replicas)]
    padded = (global_seq + global_seq)[: per_rank * num_replicas]
    assert interleaved == padded  # disjoint positions rank::num_replicas that cover it all


def test_padding_longer_than_the_sequence() -> None:
    labels = np.eye(2, dtype=np.int64)  # int(1 * 2 / 1) = 2 samples for 5 ranks
    shards = [list(ClassAwareSampler(labels, reduce=1, num_replicas=5, rank=r)) for r in range(5)]
    assert all(len(s) == 1 for s in shards)
    with pytest.raises(ValueError, match="drop_last"):
        ClassAwareSampler(labels, reduce=1, num_replicas=5, rank=0, drop_last=True)


def test_distributed_defaults_come_from_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = _small_labels()
    assert (ClassAwareSampler(labels).num_replicas, ClassAwareSampler(labels).rank) == (1, 0)
    monkeypatch.setattr(sampling_module.dist, "is_available", lambda: True)
    monkeypatch.setattr(sampling_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(sampling_module.dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(sampling_module.dist, "get_rank", lambda: 3)
    s = ClassAwareSampler(labels)
    assert (s.num_replicas, s.rank) == (4, 3)
    assert ClassAwareSampler(labels, num_replicas=2, rank=1).num_replicas == 2


def test_seed_and_epoch_determine_the_order() -> None:
    labels = _small_labels()
    a, b = ClassAwareSampler(labels, seed=1), ClassAwareSampler(torch.from_numpy(labels), seed=1)
    assert list(a) == list(b) == list(a)  # same seed + epoch, tensor or array input, repeatable
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(ClassAwareSampler(labels, seed=2)) != list(ClassAwareSampler(labels, seed=1))
    # seed + epoch is what counts
    c = ClassAwareSampler(labels, seed=0)
    c.set_epoch(2)
    assert list(c) == list(a)
    # resume from a state dict
    state = a.state_dict()
    assert state == {"epoch": 1, "seed": 1}
    fresh = ClassAwareSampler(labels)
    fresh.load_state_dict(state)
    assert list(fresh) == list(a)
    with pytest.raises(ValueError, match="epoch"):
        fresh.load_state_dict({"seed": 0})


def test_global_random_state_is_untouched() -> None:
    labels = _small_labels()
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    sampler = ClassAwareSampler(labels, num_samples_cls=2)
    list(sampler)
    sampler.set_epoch(3)
    sampler.sample_with_classes()
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), np_state))
    # and global reseeding does not change the sampler's order
    first = list(sampler)
    torch.manual_seed(123)
    assert list(sampler) == first


def test_works_with_a_dataloader() -> None:
    labels = _small_labels()
    dataset = TensorDataset(torch.arange(len(labels)), torch.from_numpy(labels))
    sampler = ClassAwareSampler(labels, num_samples_cls=2, reduce=2)
    seen = torch.cat([idx for idx, _ in DataLoader(dataset, batch_size=8, sampler=sampler)])
    assert seen.tolist() == list(sampler)


@pytest.mark.parametrize(
    ("labels", "kwargs", "error", "match"),
    [
        (np.ones(5), {}, ValueError, "2-D"),
        (np.ones((0, 3)), {}, ValueError, "at least one row"),
        (np.array([[1, 2], [0, 1]]), {}, ValueError, r"values in \{0, 1\}.*2.*\(0, 1\)"),
        (np.array([[1.0, np.nan], [0, 1]]), {}, ValueError, r"\(0, 1\)"),
        # a tiny value that a float sum would absorb into the count of ones is still not a label
        (np.array([[1.0, 1e-20], [0, 1]]), {}, ValueError, r"1e-20.*\(0, 1\)"),
        (np.array([[1, 0, 0], [1, 0, 0]]), {}, ValueError, r"2 class\(es\).*\[1, 2\]"),
        (np.eye(3), {"num_samples_cls": 0}, ValueError, "num_samples_cls"),
        (np.eye(3), {"reduce": 0}, ValueError, "reduce"),
        (np.eye(3), {"num_replicas": 2, "rank": 2}, ValueError, "rank"),
        (np.eye(3), {"num_replicas": 0}, ValueError, "num_replicas"),
        (np.array([["a"]]), {}, TypeError, "dtype"),
    ],
)
def test_bad_input(labels, kwargs, error, match: str) -> None:
    with pytest.raises(error, match=match):
        ClassAwareSampler(labels, **kwargs)


def test_docstring_examples() -> None:
    result = doctest.testmod(sampling_module, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0


def test_reversed_sampler_draws_classes_in_inverse_proportion_to_their_counts() -> None:
    labels = _small_labels()
    freq = labels.sum(0)
    sampler = ReversedSampler(labels, epoch_length=70_000, seed=3)
    indices, classes = sampler.sample_with_classes()
    assert len(sampler) == 70_000 and indices.tolist() == list(sampler)
    assert bool((torch.as_tensor(labels)[indices, classes] == 1).all())  # every image contains its drawn class
    expected = (1 / freq) / (1 / freq).sum()
    observed = np.bincount(classes.numpy(), minlength=7) / 70_000
    np.testing.assert_allclose(observed, expected, atol=0.006)
    # the rarest class's images are cycled: each appears within one draw of the others
    rare = int(np.argmin(freq))
    counts = np.bincount(indices[classes == rare].numpy())[np.flatnonzero(labels[:, rare])]
    assert counts.max() - counts.min() <= 1
    assert len(ReversedSampler(labels)) == 60  # default: one epoch of the data's size


def test_reversed_sampler_is_seeded_per_epoch_and_rank_aware() -> None:
    labels = _small_labels()
    a, b = ReversedSampler(labels, seed=1), ReversedSampler(labels, seed=1)
    state = torch.get_rng_state()
    assert list(a) == list(b) and torch.equal(torch.get_rng_state(), state)  # no global random state touched
    b.set_epoch(1)
    assert list(a) != list(b)
    global_seq = list(ReversedSampler(labels, seed=1, epoch_length=61))
    shards = [list(ReversedSampler(labels, seed=1, epoch_length=61, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(x) for x in shards] == [31, 31]
    assert [shards[i % 2][i // 2] for i in range(62)] == (global_seq + global_seq)[:62]
    with pytest.raises(ValueError, match="reversed sampler cannot draw classes without samples.*\\[1\\]"):
        ReversedSampler(np.array([[1, 0], [1, 0]]))
    with pytest.raises(ValueError, match="epoch_length"):
        ReversedSampler(labels, epoch_length=0)


def test_class_aware_epoch_length_overrides_the_original_rounding() -> None:
    labels = _small_labels()
    s = ClassAwareSampler(labels, epoch_length=50, seed=2)
    indices, classes = s.sample_with_classes()
    assert len(s) == 50 == len(indices)
    assert np.bincount(classes.numpy(), minlength=7).max() - np.bincount(classes.numpy(), minlength=7).min() <= 1
