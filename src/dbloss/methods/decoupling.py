"""Decoupling representation and classifier (Kang et al., "Decoupling Representation and Classifier
for Long-Tailed Recognition", ICLR 2020): cRT, tau-normalisation and LWS.

Stage 1 learns the representation (backbone, neck and classifier) with the recipe's sampler
(uniform, ``sampler: random``, in Kang et al.). Stage 2 freezes everything but the classifier
and adjusts it, one of (``method: {name: decoupling, mode: ...}`` in the recipe):

* ``crt`` (classifier re-training): the classifier is re-initialised and re-trained for
  ``method.stage2_epochs`` with ``method.stage2_sampler`` (class-aware by default) at ``method.stage2_lr``;
* ``tau-norm``: no training; each class's weight row is rescaled, ``w_k / ||w_k||^tau``
  (:func:`tau_normalize`, ``method.tau`` in the recipe; the bias is left as trained);
* ``lws`` (learnable weight scaling): only a per-class scale ``f_k`` of the weights is learned,
  the paper's ``w_k -> f_k w_k``: logits ``f_k (w_k·x) + b_k`` (:class:`ScaledLinear`, scales 1
  in stage 1), with the stage-2 sampler. The bias is not scaled: scaling it too would keep every
  logit's sign, so no decision at the 0.5 threshold could change in the multi-label setting.

The engine runs the stages one after the other with the same ``train_one_epoch``
(:meth:`Decoupling.stages` gives each stage's configuration); stage 2 writes into the
same run folder and its checkpoints say which stage their model is in, so a run killed in stage 2
resumes in stage 2. In stage 2 the frozen part runs in eval mode (batch-norm statistics and dropout as at
test time): every tensor of the model but the classifier's stays bit-identical.

In the multi-label setting tau-norm and LWS cannot change the mAP: each class's logit is
rescaled by a positive constant (``1 / ||w_k||^tau`` or ``f_k > 0`` on ``w_k·x``), which keeps
the order of the samples within every class, and AP is computed per class over samples. They
change only what is read at a threshold (F1), through the weight term's balance with the bias.
In Kang et al.'s single-label softmax the classes compete for each sample, so there the same
rescaling changes the prediction. cRT re-learns the weight directions and does change the ranking.

Deviations: Kang et al. train single-label softmax classifiers with a cosine schedule (cRT: 10
epochs); here the classifier is the multi-label one of this project under the recipe's loss, and
stage 2 repeats stage 1's step schedule over its own ``stage2_epochs`` (no warm-up). LWS and
tau-norm need the plain linear classifier (``method.classifier: plain``); cRT also re-trains ML-GCN's.
"""

from __future__ import annotations

import torch
from torch import nn

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from dbloss.methods.base import Method, Stage, StageContext, second_stage
from dbloss.methods.ml_gcn import MLGCN
from dbloss.models.classifier import reinitialize

if TYPE_CHECKING:
    from dbloss.config import TrainConfig
    from dbloss.stats import LabelStats

__all__ = ["CLASSIFIERS", "Decoupling", "DecouplingOptions", "ScaledLinear", "enter_stage2", "freeze_representation",
           "tau_normalize"]


def tau_normalize(weight: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Kang et al.'s tau-normalised classifier: each row ``w_k / ||w_k||^tau``.

    Args:
        weight: (C, D) classifier weights (row k: class k).
        tau: 0 leaves the weights unchanged; 1 gives unit-norm rows. Default 1.

    Returns:
        (C, D) tensor of ``weight``'s dtype and device (a zero row stays zero).

    >>> tau_normalize(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), tau=1.0).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 1.0]]
    """
    if weight.ndim != 2:
        raise ValueError(f"Expected `weight` of shape (C, D), but got {tuple(weight.shape)}")
    norm = weight.norm(dim=1, keepdim=True)
    return weight / torch.where(norm > 0, norm, torch.ones_like(norm)).pow(tau)


class ScaledLinear(nn.Linear):
    """A linear classifier with LWS's per-class weight scales: (B, D) -> (B, C) logits ``f ⊙ (x Wᵀ) + b``.

    ``scales`` (C,) starts at 1 and is frozen in stage 1 (the layer is then ``nn.Linear``);
    stage 2 of ``decoupling: lws`` trains only it. Its state dict is ``nn.Linear``'s plus ``scales``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.scales = nn.Parameter(torch.ones(out_features), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "ScaledLinear":
        """``linear`` with scales 1: its weights copied, the global random stream left as it was
        (a recipe with ``decoupling: lws`` trains its stage 1 exactly as the same recipe without it)."""
        with torch.random.fork_rng(devices=[]):
            scaled = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        scaled.load_state_dict({**linear.state_dict(), "scales": scaled.scales.detach().clone()})
        return scaled.to(linear.weight.device, linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x, self.weight) * self.scales.to(x.dtype)
        return out if self.bias is None else out + self.bias


def freeze_representation(model: nn.Module) -> None:
    """Freeze every parameter of ``model`` and keep everything but its ``classifier`` in eval
    mode under ``model.train()`` (the model's ``frozen_representation`` flag)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.frozen_representation = True  # read by MultiLabelClassifier / FeatureClassifier.train
    model.train(model.training)


def _reset(module: nn.Module) -> None:
    reinitialize(module)
    if isinstance(module, ScaledLinear):
        module.scales.data.fill_(1.0)


def enter_stage2(model: nn.Module, mode: str, *, tau: float = 1.0, fresh: bool = True) -> None:
    """Turn a stage-1 model into decoupling's stage 2 for ``mode`` (crt, lws, tau-norm), in place.

    The representation is frozen (:func:`freeze_representation`) and the classifier's stage-2
    parameters are made trainable. ``fresh`` (the stage boundary of a run): also re-initialise
    the classifier (cRT) or tau-normalise its weights with ``tau`` (tau-norm); False when the model
    will receive the weights of a stage-2 checkpoint (resume).
    """
    head = model.classifier
    if mode in ("lws", "tau-norm") and not isinstance(head, nn.Linear):
        raise ValueError(f"method.mode={mode!r} rescales a linear classifier's rows, but the model's classifier is "
                         f"{type(head).__name__}; use method.mode=crt")
    if mode == "lws" and not isinstance(head, ScaledLinear):
        raise ValueError("method.mode='lws' needs the model built with its ScaledLinear classifier (build_network)")
    freeze_representation(model)
    if mode == "crt":
        if fresh:
            _reset(head)
        for p in head.parameters():
            p.requires_grad_(not isinstance(head, ScaledLinear) or p is not head.scales)
    elif mode == "lws":
        head.scales.requires_grad_(True)
    elif mode == "tau-norm":
        if fresh:
            with torch.no_grad():
                head.weight.copy_(tau_normalize(head.weight, tau))
    else:
        raise ValueError(f"Expected `method.mode` to be one of ('crt', 'lws', 'tau-norm'), but got {mode!r}")


#: The classifiers decoupling re-trains (``method.classifier``): the plain linear one and ML-GCN's.
CLASSIFIERS: dict[str, type[Method]] = {"plain": Method, "ml-gcn": MLGCN}


@dataclass
class DecouplingOptions:
    """``method: {name: decoupling, ...}``: the second stage and the classifier of the first."""

    mode: Literal["crt", "lws", "tau-norm"] = "crt"
    stage2_epochs: int = 4  # crt / lws: epochs of stage 2 (tau-norm trains nothing: 0)
    stage2_sampler: Literal["random", "class-aware"] = "class-aware"
    stage2_lr: float | None = None  # null: the recipe's `optim.lr`
    tau: float = 1.0  # tau-norm: w_k / ||w_k||^tau
    # the classifier of stage 1: "plain" (linear) or ML-GCN's, {name: ml-gcn, hidden: ...} (crt only)
    classifier: Any = field(default=None, metadata={"method": tuple(CLASSIFIERS)})

    def validate(self) -> None:
        name = classifier_name(self.classifier)
        if name not in CLASSIFIERS:
            raise ValueError(f"Expected `method.classifier` to be one of {tuple(CLASSIFIERS)}, but got {name!r}")
        if self.mode in ("crt", "lws") and self.stage2_epochs < 1:
            raise ValueError(f"Expected `method.stage2_epochs` >= 1 with method.mode={self.mode!r} (its stage 2 "
                             f"trains the classifier), but got {self.stage2_epochs!r}")
        if self.mode == "tau-norm" and self.stage2_epochs != 0:
            raise ValueError(f"Expected `method.stage2_epochs` = 0 with method.mode='tau-norm' (no stage 2 "
                             f"training), but got {self.stage2_epochs!r}")
        if self.mode in ("lws", "tau-norm") and name != "plain":
            raise ValueError(f"Expected method.classifier='plain' with method.mode={self.mode!r} (it rescales a "
                             f"linear classifier's rows), but got {name!r}; method.mode=crt works with any classifier")
        if self.stage2_lr is not None and self.stage2_lr < 0:
            raise ValueError(f"Expected `method.stage2_lr` >= 0 or null, but got {self.stage2_lr!r}")


def classifier_name(classifier: Any) -> str:
    """The name of decoupling's ``classifier`` option (None, a name, or a nested method configuration)."""
    if classifier is None:
        return "plain"
    return classifier if isinstance(classifier, str) else classifier.name


class Decoupling(Method):
    """Decoupling: stage 1 trains the classifier of ``method.classifier`` with the representation;
    stage 2 re-trains (crt), rescales (lws) or tau-normalises (tau-norm) the classifier alone."""

    name = "decoupling"
    Options = DecouplingOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        inner = self.options.classifier
        self.classifier = CLASSIFIERS[classifier_name(inner)](getattr(inner, "options", None))

    @property
    def network_name(self) -> str:
        return self.classifier.network_name

    def set_classifier(self, model: nn.Module, cfg: "TrainConfig", stats: "LabelStats | None") -> None:
        self.classifier.set_classifier(model, cfg, stats)
        if self.options.mode == "lws":
            model.classifier = ScaledLinear.from_linear(model.classifier)  # stage 1 trains as without LWS, bit for bit

    def stages(self, cfg: "TrainConfig") -> list[Stage]:
        o = self.options
        return [Stage(1, cfg, 0), second_stage(cfg, o.stage2_epochs, o.stage2_sampler, o.stage2_lr, o.mode)]

    def enter_stage(self, model: nn.Module, stage: Stage, *, fresh: bool, context: StageContext | None = None) -> None:
        enter_stage2(model, self.options.mode, tau=self.options.tau, fresh=fresh)

    def resume_keys(self, stage: int) -> dict[str, Any]:
        """A stage-1 checkpoint (e.g. a finished ERM run) may go on into any stage 2; a stage-2 one only its own."""
        return {"network": self.network_name, **({"method.mode": self.options.mode} if stage == 2 else {})}


