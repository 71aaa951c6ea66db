"""The training stages of a recipe: one, or two where a method trains in two.

* decoupling (``decoupling: crt / lws / tau-norm``, :mod:`dbloss.methods.decoupling`): stage 2 freezes the
  representation and re-trains (or rescales) the classifier;
* OLTR (``head: oltr``, :mod:`dbloss.methods.oltr`): stage 2 forms the visual memory from the stage-1
  features and trains the whole model with modulated attention and the meta-embedding classifier.

Stage 2 runs the same ``train_one_epoch`` with its own configuration (:func:`training_stages`),
writes into the same run folder, and its checkpoints say which stage their model is in, so a run
killed in stage 2 resumes in stage 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dbloss.config import TrainConfig

__all__ = ["Stage", "has_stage2", "training_stages"]


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its number (1, 2), its configuration and the run's epochs before it."""

    number: int
    cfg: TrainConfig
    first_epoch: int

    @property
    def end_epoch(self) -> int:
        """The run's epoch count when this stage is done."""
        return self.first_epoch + self.cfg.epochs


def has_stage2(cfg: TrainConfig) -> bool:
    """Whether the recipe trains in two stages (decoupling, or the OLTR head)."""
    return cfg.decoupling != "none" or cfg.head == "oltr"


def training_stages(cfg: TrainConfig) -> list[Stage]:
    """The stages of a recipe: stage 1 as written; with a second stage (:func:`has_stage2`) a
    stage 2 whose configuration is the recipe's with ``epochs=stage2_epochs``,
    ``sampler=stage2_sampler``, ``lr=stage2_lr`` (the recipe's ``lr`` when null) and no warm-up.

    ``epochs`` of a tau-norm stage 2 is 0: it trains nothing.

    >>> [(s.number, s.cfg.epochs, s.cfg.sampler) for s in training_stages(TrainConfig(decoupling="crt",
    ...     stage2_epochs=2, sampler="random"))]
    [(1, 8, 'random'), (2, 2, 'class-aware')]
    """
    stages = [Stage(1, cfg, 0)]
    if has_stage2(cfg):
        # the stage's own config (epochs may be 0 for tau-norm: built without validate)
        second = dataclasses.replace(cfg, epochs=cfg.stage2_epochs, sampler=cfg.stage2_sampler,
                                     lr=cfg.lr if cfg.stage2_lr is None else cfg.stage2_lr, warmup_iters=0)
        stages.append(Stage(2, second, cfg.epochs))
    return stages
