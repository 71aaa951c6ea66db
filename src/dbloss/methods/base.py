"""The method protocol: the hooks a method overrides, with the plain classifier's behaviour as defaults.

A method (ML-GCN, OLTR, BBN, decoupling, the next one) is one module of :mod:`dbloss.methods`
holding a :class:`Method` subclass and its ``Options`` dataclass (the keys of the recipe's
``method`` section besides ``name``). The training loop (:mod:`dbloss.training.engine`) calls
only these hooks, in this order, and never asks which method it runs:

* :meth:`Method.check`: cross-section checks of a resolved configuration (``ValueError``);
* :meth:`Method.set_classifier` and :meth:`Method.wrap`: the network, from the plain model
  (backbone, neck, linear classifier) that :func:`dbloss.models.classifier.build_model` builds;
* :meth:`Method.train_data`: the sampler and dataset the training loader draws from;
* :meth:`Method.step_loss`: the loss of one batch;
* :meth:`Method.stages` and :meth:`Method.enter_stage`: the stages of a run and what happens at a
  stage boundary (and when a checkpoint of a later stage is resumed);
* :meth:`Method.resume_keys`: what a checkpoint must share with a run that continues it;
* :meth:`Method.sampling_label`: how the run samples, for tables.

Like Lightning's hooks, a method overrides only the steps it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from dbloss.devices import autocast, to_input

if TYPE_CHECKING:  # the configuration imports the methods' table; the methods only read it
    from dbloss.config import TrainConfig
    from dbloss.stats import LabelStats

__all__ = ["Method", "NoOptions", "Stage", "StageContext", "second_stage", "trainable_parameters"]


@dataclass
class NoOptions:
    """A method without options of its own."""


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its number (1, 2), its configuration, the run's epochs before it, and a
    label for logs (e.g. ``"crt"``)."""

    number: int
    cfg: "TrainConfig"
    first_epoch: int
    label: str = ""

    @property
    def end_epoch(self) -> int:
        """The run's epoch count when this stage is done."""
        return self.first_epoch + self.cfg.schedule.epochs


@dataclass
class StageContext:
    """What the loop gives a method at a stage boundary.

    Attributes:
        train_batches: yields this rank's share of the training set as ``(x, y)`` on the device,
            with the evaluation transform (x (B, ...), y (B, C)).
        all_reduce: sums a tensor over the ranks in place (a no-op in one process).
        is_main: whether this process logs.
    """

    train_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    all_reduce: Callable[[torch.Tensor], None]
    is_main: bool = True


class Method:
    """The plain multi-label classifier: one stage, the recipe's sampler, the recipe's loss on the logits.

    Args:
        options: an instance of :attr:`Options` (the ``method`` section's keys); None: its defaults.
    """

    #: The method's name in recipes (``method.name``) and in :data:`dbloss.methods.METHODS`.
    name: ClassVar[str] = "plain"
    #: The dataclass of the method's own options.
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None) -> None:
        self.options = self.Options() if options is None else options

    # configuration ----------------------------------------------------------------------------
    def check(self, cfg: "TrainConfig") -> None:
        """Raise ``ValueError`` naming the keys when the rest of ``cfg`` does not suit the method. By
        default: ``eval.keep_best`` with more than one stage (the best epoch is chosen within one stage)."""
        if cfg.eval.keep_best and len(self.stages(cfg)) > 1:
            raise ValueError(f"Expected eval.keep_best=false with method {self.name!r} (the best epoch is chosen "
                             f"within one stage; not supported across two), but got keep_best=true")

    @property
    def network_name(self) -> str:
        """The kind of network a stage-1 checkpoint of this method holds (what a resumed run must share)."""
        return self.name

    # the network --------------------------------------------------------------------------------
    def set_classifier(self, model: nn.Module, cfg: "TrainConfig", stats: "LabelStats | None") -> None:
        """Put the method's classifier in place of ``model.classifier`` (a linear layer), in place.
        ``stats``: the training labels' statistics (None: the model will receive a checkpoint's weights)."""

    def wrap(self, model: nn.Module, cfg: "TrainConfig") -> nn.Module:
        """The network the method trains around the plain ``model`` (returned as is by default)."""
        return model

    # batches ------------------------------------------------------------------------------------
    def train_data(self, sampler: Any, dataset: Any, cfg: "TrainConfig", labels: Any, *, num_replicas: int = 1,
                   rank: int = 0) -> tuple[Any, Any]:
        """The training ``(sampler, dataset)``: the recipe's sampler over the training split by default.
        ``labels``: (N, C) training labels; ``num_replicas``, ``rank``: the distributed ranks."""
        return sampler, dataset

    def sampling_label(self, cfg: "TrainConfig") -> str:
        """How the run samples its training data, for tables: the sampler, or the two stages'
        (``random, then class-aware``)."""
        stages = self.stages(cfg)
        if len(stages) > 1 and stages[1].cfg.schedule.epochs > 0:
            return f"{cfg.sampler.name}, then {stages[1].cfg.sampler.name}"
        return cfg.sampler.name

    # the step -----------------------------------------------------------------------------------
    def step_loss(self, net: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: "TrainConfig",
                  device: torch.device, epoch: int) -> torch.Tensor:
        """The training loss of one batch: the model under autocast, the loss in float32.

        Args:
            net: the network (possibly under DDP / ``torch.compile``); x: (B, ...) inputs (on the host);
            y: (B, C) targets on ``device``; epoch: 0-based epoch of the current stage.
        """
        with autocast(cfg.run.amp, device):
            logits = net(to_input(x, device, cfg.run.channels_last))
        return loss_fn(logits.float(), y)

    # stages ------------------------------------------------------------------------------------
    def stages(self, cfg: "TrainConfig") -> list[Stage]:
        """The run's stages: one, as the recipe says."""
        return [Stage(1, cfg, 0)]

    def enter_stage(self, model: nn.Module, stage: Stage, *, fresh: bool, context: StageContext | None = None) -> None:
        """Turn ``model`` into its form for ``stage`` (> 1), in place: which parameters train, what
        is re-initialised. ``fresh``: the stage boundary of a run; False when the model will receive
        the weights of a checkpoint of that stage (resume; ``context`` is then None)."""
        raise ValueError(f"method {self.name!r} has no stage {stage.number}")

    def resume_keys(self, stage: int) -> dict[str, Any]:
        """What a checkpoint in ``stage`` must share with a run that continues it."""
        return {"network": self.network_name}


def second_stage(cfg: "TrainConfig", epochs: int, sampler: str, lr: float | None, label: str) -> Stage:
    """A stage 2 after ``cfg``'s epochs: the recipe's configuration with ``epochs`` (0 trains nothing),
    ``sampler``, ``lr`` (None: the recipe's) and no warm-up (not validated: 0 epochs is no recipe's)."""
    second = cfg.replace(schedule={"epochs": epochs, "warmup_iters": 0}, sampler={"name": sampler},
                         optim={"lr": cfg.optim.lr if lr is None else lr})
    return Stage(2, second, cfg.schedule.epochs, label)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimiser of the current stage updates."""
    return [p for p in model.parameters() if p.requires_grad]
