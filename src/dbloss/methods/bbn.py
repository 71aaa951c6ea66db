"""BBN (Zhou et al., "BBN: Bilateral-Branch Network with Cumulative Learning for Long-Tailed Visual
Recognition", CVPR 2020), in the multi-label form: sigmoid outputs and any loss of ``build_loss``.

Two branches share the network up to its last block. The conventional branch learns from the
recipe's sampler (uniform, ``sampler: random``, in BBN), the re-balancing branch from a
re-balancing sampler (``bbn_sampler``: BBN's reversed sampler, class k drawn with probability
proportional to 1 / n_k (:class:`dbloss.sampling.ReversedSampler`), or class-aware). Each training
step takes a pair of batches, ``(x_c, y_c)`` and ``(x_r, y_r)``, and (the paper's Eq. of the
cumulative learning strategy):

    z = alpha * W_c f_c(x_c) + (1 - alpha) * W_r f_r(x_r)        the branches' logits, mixed   (B, C)
    L = alpha * loss(z, y_c) + (1 - alpha) * loss(z, y_r)         the recipe's loss on both labels
    alpha = 1 - (T / T_max) ** 2                                  T the epoch (0-based), T_max the epochs

so training moves from the conventional branch (alpha = 1 in the first epoch) to the
re-balancing one. At test time ``alpha = 0.5`` with both branches on the same image.

The pair of batches comes from one loader: :class:`PairedSampler` zips the two samplers
(index pairs ``(i, j)``) and :class:`PairedDataset` returns both samples stacked, so workers,
``set_epoch``, resuming and the distributed slicing (both samplers are rank-aware) work as for
one sampler.

Deviations, each deliberate:

* **What each branch owns.** BBN duplicates the last residual block of a ResNet; here each branch
  owns the backbone's last block (:func:`split_last_block`: a torchvision ResNet's last
  bottleneck of ``layer4``, ConvNeXt's last block, EfficientNet's last convolution stage,
  ``small_cnn``'s last stage) plus this project's neck and a linear classifier. Backbones without such a block
  (timm models, which return pooled features; precomputed features) share everything up to the
  neck, and the branches own the neck and the classifier. The re-balancing branch's block starts
  from the same (pretrained or random) weights as the conventional one's; its neck and classifier
  are initialised independently.
* **No factor 2.** The release mixes ``2 * [alpha f_c, (1 - alpha) f_r]`` into one linear layer
  over the concatenated features (so its test logits are the sum of the branches); we keep the
  paper's equation, two classifiers and ``z = alpha z_c + (1 - alpha) z_r``: the same family of
  models, scaled by 2.
* **Multi-label.** The branches' logits go through a sigmoid; the reversed sampler draws an image
  that contains the drawn class (with whatever else it contains).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from dbloss.devices import autocast, to_input
from dbloss.methods.base import Method
from dbloss.sampling import ClassAwareSampler, ReversedSampler
from dbloss.models.classifier import (FeatureClassifier, FrozenBatchNormModule, MultiLabelClassifier, SmallConvNet,
                                      reinitialize)

if TYPE_CHECKING:
    from dbloss.config import TrainConfig

__all__ = ["BBN", "BBNNetwork", "BBNOptions", "Branch", "PairedDataset", "PairedSampler", "bbn_loss", "bbn_network",
           "cumulative_alpha", "split_last_block"]

log = logging.getLogger(__name__)

#: The mixing weight at test time (the paper's).
TEST_ALPHA = 0.5


def cumulative_alpha(epoch: int, epochs: int) -> float:
    """BBN's cumulative-learning weight of the conventional branch: ``1 - (epoch / epochs) ** 2``.

    Args:
        epoch: the epoch, 0-based (the release's ``epoch - 1`` with 1-based epochs).
        epochs: the run's epochs, T_max.

    >>> [round(cumulative_alpha(e, 4), 4) for e in range(4)]
    [1.0, 0.9375, 0.75, 0.4375]
    """
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"Expected 0 <= epoch < epochs, but got epoch={epoch!r}, epochs={epochs!r}")
    return 1.0 - (epoch / epochs) ** 2


def bbn_loss(loss_fn: nn.Module, logits: torch.Tensor, targets_c: torch.Tensor, targets_r: torch.Tensor,
             alpha: float) -> torch.Tensor:
    """BBN's loss: ``alpha * loss_fn(z, y_c) + (1 - alpha) * loss_fn(z, y_r)``.

    Args:
        loss_fn: the recipe's loss (any of ``build_loss``), ``(B, C) logits, (B, C) targets -> loss``.
        logits: (B, C) the mixed logits ``z`` of :class:`BBNNetwork`.
        targets_c: (B, C) the labels of the conventional batch.
        targets_r: (B, C) the labels of the re-balancing batch.
        alpha: the conventional branch's weight (:func:`cumulative_alpha`).
    """
    return alpha * loss_fn(logits, targets_c) + (1.0 - alpha) * loss_fn(logits, targets_r)


class Branch(nn.Module):
    """One BBN branch: its own last block, pooling, neck and linear classifier; trunk output -> (B, C) logits."""

    def __init__(self, block: nn.Module, neck: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = neck
        self.classifier = classifier

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.block(h)
        if h.ndim == 4:  # (B, F, h, w) feature maps; pooled backbones and features are (B, F) already
            h = self.pool(h)
        return self.classifier(self.neck(h.flatten(1)))


class BBNNetwork(FrozenBatchNormModule):
    """BBN: a shared trunk and two branches. ``forward(x, x_r=None, alpha=0.5)`` -> (B, C) logits.

    ``alpha * conventional(trunk(x)) + (1 - alpha) * rebalancing(trunk(x_r))``; without ``x_r``
    both branches see ``x`` (test time, where the trunk runs once). ``alpha = 1`` is the
    conventional branch alone (what the first training epoch computes).

    Attributes:
        backbone: the shared trunk (``nn.Identity`` for a head on features).
        conventional, rebalancing: the :class:`Branch` es.
        in_features: D for a model on (B, D) features, None for an image model.

    >>> net = bbn_network(FeatureClassifier(8, 3, hidden=4)).eval()
    >>> x = torch.randn(5, 8)
    >>> net(x).shape, torch.equal(net(x, torch.randn(5, 8), alpha=1.0), net.conventional(x))
    (torch.Size([5, 3]), True)
    """

    def __init__(self, backbone: nn.Module, conventional: Branch, rebalancing: Branch,
                 in_features: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.conventional = conventional
        self.rebalancing = rebalancing
        self.in_features = in_features

    def forward(self, x: torch.Tensor, x_r: torch.Tensor | None = None, alpha: float = TEST_ALPHA) -> torch.Tensor:
        h = self.backbone(x)
        z_c = self.conventional(h)
        z_r = self.rebalancing(h if x_r is None else self.backbone(x_r))
        return alpha * z_c + (1.0 - alpha) * z_r


def split_last_block(backbone: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``(trunk, last_block)`` of a backbone built by :func:`dbloss.models.classifier.build_backbone`: the part
    both BBN branches share and the block each branch gets a copy of; ``last_block`` is None
    where there is no block to split off (timm backbones, which return pooled features, or a last
    layer without weights).

    * ``small_cnn``: its first three stages and its last stage;
    * an ``nn.Sequential`` of stages (a torchvision ResNet as built here: stem, ``layer1`` ...
      ``layer4``; the ``features`` of ConvNeXt, EfficientNet, ...): when its last stage is a
      sequence of blocks (modules with weighted layers of their own: a ResNet's bottlenecks,
      ConvNeXt's blocks), everything before that stage's last block, and that block; otherwise
      everything before the last stage, and that stage (EfficientNet's final 1x1 convolution).

    >>> trunk, block = split_last_block(SmallConvNet())
    >>> len(trunk), type(block).__name__
    (3, 'Sequential')
    """
    if isinstance(backbone, SmallConvNet):
        return nn.Sequential(*backbone.stages[:-1]), backbone.stages[-1]
    if not (isinstance(backbone, nn.Sequential) and len(backbone) and _has_weights(backbone[-1])):
        return backbone, None
    head, last = list(backbone)[:-1], backbone[-1]
    if isinstance(last, nn.Sequential) and len(last) > 1 and _is_block(last[-1]):
        return nn.Sequential(*head, nn.Sequential(*list(last)[:-1])), last[-1]
    return nn.Sequential(*head), last


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_block(module: nn.Module) -> bool:
    """A block of layers with weights (a bottleneck), not a single layer (a convolution, an activation)."""
    return _has_weights(module) and any(True for _ in module.children())


def bbn_network(base: nn.Module) -> BBNNetwork:
    """The BBN of a model built by :func:`dbloss.models.classifier.build_model`: the conventional branch takes
    the model's last block, neck and classifier; the re-balancing branch a copy of the block and a
    freshly initialised neck and classifier."""
    if isinstance(base, MultiLabelClassifier):
        trunk, block = split_last_block(base.backbone)
        in_features = None
    elif isinstance(base, FeatureClassifier):
        trunk, block, in_features = nn.Identity(), None, base.in_features
    else:
        raise TypeError(f"BBN splits a MultiLabelClassifier or a FeatureClassifier, not {type(base).__name__}")
    conventional = Branch(block if block is not None else nn.Identity(), base.neck, base.classifier)
    rebalancing = copy.deepcopy(conventional)
    reinitialize(rebalancing.neck)
    reinitialize(rebalancing.classifier)
    owned = "the backbone's last block, " if block is not None else ""
    log.info("BBN: each branch owns %sthe neck and a classifier; %d of %d parameters are shared", owned,
             sum(p.numel() for p in trunk.parameters()),
             sum(p.numel() for m in (trunk, conventional, rebalancing) for p in m.parameters()))
    return BBNNetwork(trunk, conventional, rebalancing, in_features)


class PairedSampler(Sampler[tuple[int, int]]):
    """Index pairs ``(i, j)``: ``i`` from the conventional sampler, ``j`` from the re-balancing one.

    Both samplers must yield the same number of indices on this rank (give the re-balancing
    sampler the conventional one's epoch length); ``set_epoch`` reaches both.
    """

    def __init__(self, conventional: Sampler[int], rebalancing: Sampler[int]) -> None:
        if len(conventional) != len(rebalancing):  # type: ignore[arg-type]
            raise ValueError(f"Expected samplers of the same length, but the conventional one yields "
                             f"{len(conventional)} indices and the re-balancing one {len(rebalancing)}")  # type: ignore[arg-type]
        self.conventional = conventional
        self.rebalancing = rebalancing

    def set_epoch(self, epoch: int) -> None:
        for s in (self.conventional, self.rebalancing):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.conventional)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(iter(self.conventional), iter(self.rebalancing))


class PairedDataset(Dataset):
    """A dataset indexed by pairs ``(i, j)`` (:class:`PairedSampler`): ``(x, y, idx)`` with both
    samples stacked, x (2, ...) and y (2, C); batched (B, 2, ...) and (B, 2, C)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, pair: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (x_c, y_c, i), (x_r, y_r, j) = self.dataset[pair[0]], self.dataset[pair[1]]
        return torch.stack([x_c, x_r]), torch.stack([torch.as_tensor(y_c), torch.as_tensor(y_r)]), torch.tensor([i, j])


#: Added to the run's seed for the re-balancing sampler: another stream, not a copy of the conventional order.
REBALANCING_SEED_OFFSET = 1_000_003


@dataclass
class BBNOptions:
    """``method: {name: bbn, sampler: ...}``: the re-balancing branch's sampler."""

    sampler: Literal["reversed", "class-aware"] = "reversed"


class BBN(Method):
    """BBN: a conventional branch on the recipe's sampler and a re-balancing branch on ``method.sampler``,
    trained on pairs of batches and mixed by cumulative learning."""

    name = "bbn"
    Options = BBNOptions

    def wrap(self, model: nn.Module, cfg: "TrainConfig") -> nn.Module:
        return bbn_network(model)

    def train_data(self, sampler: Any, dataset: Any, cfg: "TrainConfig", labels: Any, *, num_replicas: int = 1,
                   rank: int = 0) -> tuple[Any, Any]:
        """Each index a pair (conventional, re-balancing): x (B, 2, ...), y (B, 2, C). The re-balancing
        sampler draws once per index of the conventional epoch (padded to a multiple of the ranks)."""
        length = len(sampler) * num_replicas
        seed = cfg.run.seed + REBALANCING_SEED_OFFSET
        if self.options.sampler == "class-aware":
            other: Any = ClassAwareSampler(labels, num_samples_cls=cfg.sampler.num_samples_cls, seed=seed,
                                           num_replicas=num_replicas, rank=rank, epoch_length=length)
        else:
            other = ReversedSampler(labels, seed=seed, num_replicas=num_replicas, rank=rank, epoch_length=length)
        return PairedSampler(sampler, other), PairedDataset(dataset)

    def sampling_label(self, cfg: "TrainConfig") -> str:
        return f"{cfg.sampler.name} + {self.options.sampler}"

    def step_loss(self, net: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: "TrainConfig",
                  device: torch.device, epoch: int) -> torch.Tensor:
        """BBN's mix of its branches and of its two batches (x (B, 2, ...), y (B, 2, C)), :func:`bbn_loss`."""
        alpha = cumulative_alpha(epoch, cfg.schedule.epochs)
        with autocast(cfg.run.amp, device):
            logits = net(to_input(x[:, 0], device, cfg.run.channels_last),
                         to_input(x[:, 1], device, cfg.run.channels_last), alpha=alpha)
        return bbn_loss(loss_fn, logits.float(), y[:, 0], y[:, 1], alpha)

    def resume_keys(self, stage: int) -> dict[str, Any]:
        return {"network": "bbn", "method.sampler": self.options.sampler}
