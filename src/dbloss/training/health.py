"""Runs that cannot fail silently: checks of a training run's health, each naming the likely
cause and the fix.

A network can stop learning without any error: a learning rate far too high for the data kills
every unit of a head, its outputs become one constant (the same scores for every sample), and
the loss, now flat, still looks like a number. These pure functions look at what the training
loop already has and return a sentence when something is wrong (``None`` when not):

* :func:`collapse_message`: the scores of a fixed probe of training samples no longer vary
  across samples (largest per-class standard deviation below :data:`COLLAPSE_SD`);
* :func:`stalled_loss_message`: the epoch loss has not fallen below the first epoch's;
* :func:`chance_message`: validation mAP no better than scoring at random (the mean class
  prevalence, what AP gives a ranking that knows nothing, and a constant one);
* :func:`non_finite_advice`: the fix to name when the loss turned NaN or infinite.

The engine (:mod:`dbloss.training.engine`) calls them after each epoch: a collapse stops the run
(:class:`dbloss.errors.TrainingCollapsedError`) or only warns (``health=warn``), the others warn;
every finding is written to ``log.jsonl`` and to ``metrics.json`` (``"health"``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["COLLAPSE_SD", "STALL_EPOCHS", "STRONG_DECAY", "chance_map", "chance_message", "collapse_message",
           "lr_advice", "non_finite_advice", "stalled_loss_message"]

#: Scores (sigmoid outputs) whose largest per-class standard deviation over samples is below this
#: are one constant: the network answers the same for every input.
COLLAPSE_SD: float = 1e-4
#: Epochs after which a loss that never fell below its first epoch's is reported.
STALL_EPOCHS: int = 3


#: A weight decay above the usual range (1e-5 to 1e-3) that also shrinks every weight by this fraction
#: or more per step (lr x weight_decay) is named as a cause beside the learning rate.
STRONG_DECAY: float = 0.01


def lr_advice(lr: float, optimizer: str, weight_decay: float = 0.0) -> str:
    """The fix for a step that is too large: the value to try, and the tool that chooses it; the
    weight decay too when it is outside the usual range and shrinks the weights by
    :data:`STRONG_DECAY` or more per step.

    >>> lr_advice(0.5, "sgd")[:70]
    'the learning rate lr=0.5 (sgd) is the likely cause: try optim.lr=0.05,'
    >>> lr_advice(0.1, "sgd", weight_decay=30)[:80]
    'the learning rate lr=0.1 (sgd) with weight_decay=30 (each step shrinks the weigh'
    """
    if weight_decay > 1e-3 and lr * weight_decay >= STRONG_DECAY:
        return (f"the learning rate lr={lr:g} ({optimizer}) with weight_decay={weight_decay:g} (each step shrinks the "
                f"weights by {min(lr * weight_decay, 1):.0%}) is the likely cause: try optim.weight_decay="
                f"{weight_decay / 100:g} or optim.lr={lr / 10:g}, or let `dbloss tune` choose them on a validation "
                f"split")
    return (f"the learning rate lr={lr:g} ({optimizer}) is the likely cause: try optim.lr={lr / 10:g}, or let "
            f"`dbloss tune` choose it on a validation split")


def collapse_message(scores: torch.Tensor, *, lr: float, optimizer: str, epoch: int,
                     weight_decay: float = 0.0) -> str | None:
    """A sentence when ``scores`` (N, C) of N >= 2 probe samples are one constant per class.

    >>> collapse_message(torch.full((8, 3), 0.5), lr=0.5, optimizer="sgd", epoch=1)[:58]
    'the model collapsed after epoch 1: its scores are the same'
    >>> collapse_message(torch.rand(8, 3), lr=0.5, optimizer="sgd", epoch=1) is None
    True
    """
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] == 0:
        return None
    spread = float(scores.float().std(dim=0).max())
    if math.isfinite(spread) and spread >= COLLAPSE_SD:
        return None
    return (f"the model collapsed after epoch {epoch}: its scores are the same for every sample (largest per-class "
            f"standard deviation over {scores.shape[0]} training samples: {spread:.1e}), so it ranks nothing and "
            f"every metric is at chance; {lr_advice(lr, optimizer, weight_decay)}")


def stalled_loss_message(losses: Sequence[float], *, lr: float, optimizer: str,
                         weight_decay: float = 0.0) -> str | None:
    """A sentence when, after :data:`STALL_EPOCHS` epochs, no epoch's mean loss fell below the first's:
    a loss that rose points at a step too large; a flat one may be either.

    >>> stalled_loss_message([0.0018, 0.0018, 0.0018], lr=0.5, optimizer="sgd")[:45]
    'the training loss has not fallen in 3 epochs '
    >>> stalled_loss_message([0.7, 0.5, 0.4], lr=0.5, optimizer="sgd") is None
    True
    """
    if len(losses) < STALL_EPOCHS or not all(math.isfinite(v) for v in losses):
        return None
    first = losses[0]
    if min(losses[1:]) < first * (1 - 1e-3):
        return None
    seen = f"the training loss has not fallen in {len(losses)} epochs (first {first:.4g}, last {losses[-1]:.4g})"
    if losses[-1] > first * 1.01:
        return f"{seen}: it rose; {lr_advice(lr, optimizer, weight_decay)}"
    return (f"{seen}: with a step far too large the model stops learning (or collapses), with one far too small it "
            f"never starts; try optim.lr={lr / 10:g} and optim.lr={lr * 10:g} ({optimizer}), or let `dbloss tune` "
            f"choose it on a validation split")


def chance_map(targets: torch.Tensor) -> float:
    """The mAP of a ranking that knows nothing: the mean prevalence of the classes with a positive
    in ``targets`` (N, C) (the expected AP of random scores, and the AP of constant ones).

    >>> chance_map(torch.tensor([[1, 0], [0, 0], [1, 1], [0, 0]]))
    0.375
    """
    t = targets.double()
    positives = t.sum(0)
    keep = positives > 0
    if not bool(keep.any()):
        return float("nan")
    return float((positives[keep] / t.shape[0]).mean())


def chance_message(val_map: float, chance: float, *, epoch: int, lr: float, optimizer: str,
                   weight_decay: float = 0.0) -> str | None:
    """A sentence when the validation mAP is at chance level: at most a quarter above the mean class
    prevalence, plus one point (with hundreds of classes a model that learns is far above it after
    an epoch or two, e.g. 0.07 against 0.006; a collapsed one is at it).

    >>> chance_message(0.0075, 0.0073, epoch=3, lr=0.5, optimizer="sgd")[:40]
    'validation mAP 0.0075 after epoch 3 is a'
    >>> chance_message(0.0745, 0.0057, epoch=2, lr=0.002, optimizer="adamw") is None
    True
    """
    if not (math.isfinite(val_map) and math.isfinite(chance)) or val_map > 1.25 * chance + 0.01:
        return None
    return (f"validation mAP {val_map:.4f} after epoch {epoch} is at chance level ({chance:.4f}, the mean class "
            f"prevalence): the model has learned nearly nothing; if its loss does not fall, "
            f"{lr_advice(lr, optimizer, weight_decay)}; if it falls slowly, try optim.lr={lr * 10:g} or train longer")


def non_finite_advice(lr: float, optimizer: str, grad_clip: float | None) -> str:
    """The fix to name with a non-finite loss.

    >>> non_finite_advice(50.0, "sgd", None)[:66]
    'the learning rate lr=50 (sgd) is the likely cause: try optim.lr=5,'
    """
    clip = "" if grad_clip else "; gradient clipping (optim.grad_clip=35) also guards against it"
    return lr_advice(lr, optimizer) + clip
