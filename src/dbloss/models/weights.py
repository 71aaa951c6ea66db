"""What a ``weights`` setting means, how many stages it lets a backbone freeze, and loading a local state dict.

Shared by the torchvision backbones (:mod:`dbloss.models.classifier`) and the timm ones
(:mod:`dbloss.models.backbones`), and by the code that reports or extracts with them; it imports
neither, so that the two backbone modules depend on it and not on each other.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dbloss.files import load_checkpoint

__all__ = ["is_pretrained", "load_local_weights", "resolve_frozen_stages"]

#: State-dict prefixes of a classifier, which a backbone's weights file may lack or hold for other classes.
_HEAD_PREFIXES = ("fc.", "classifier.", "head")


def is_pretrained(weights: str | None) -> bool:
    """Whether a ``weights`` setting loads pretrained weights (anything but ``None`` / ``"none"``)."""
    return weights not in (None, "none", "None", "")


def resolve_frozen_stages(frozen_stages: int | None, weights: str | None) -> int:
    """The number of stages to freeze: ``None`` means the paper's 1 with pretrained weights and 0
    without (random layers are never frozen); an explicit request to freeze random layers raises.

    >>> resolve_frozen_stages(None, "DEFAULT"), resolve_frozen_stages(None, None), resolve_frozen_stages(0, "x.pth")
    (1, 0, 0)
    """
    if frozen_stages is None:
        return 1 if is_pretrained(weights) else 0
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or frozen_stages < 0:
        raise ValueError(f"Expected `frozen_stages` to be None or an int >= 0, but got {frozen_stages!r}")
    if frozen_stages > 0 and not is_pretrained(weights):
        raise ValueError(f"frozen_stages={frozen_stages} would freeze randomly initialised layers (weights={weights!r}): "
                         "frozen layers never learn, and their batch norms keep their initial statistics. Freeze "
                         "only pretrained layers: set frozen_stages=0 (or leave it unset) or give `weights`")
    return frozen_stages


def load_local_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load a local state dict into ``model``; the classifier (``fc.``/``classifier.``/``head``) may be absent.

    ``name`` is the backbone's name, for the messages. Raises ``ValueError`` naming the file when it
    is not a state dict or does not fit the model (wrong shapes, missing keys outside the classifier).
    """
    state = load_checkpoint(path, kind="weights")  # weights_only: a file whose pickle would run code is refused, naming it
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (a mapping of tensor names), got {type(state).__name__}")
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)
             and not k.startswith(_HEAD_PREFIXES)]
    if wrong:
        raise ValueError(f"{path}: weights do not match backbone {name!r}; wrong shape for {wrong[:5]}")
    state = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    missing, _ = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(_HEAD_PREFIXES)]
    if bad:
        raise ValueError(f"{path}: weights do not match backbone {name!r}; missing {bad[:5]}")
