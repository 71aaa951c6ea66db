"""Deployable models of a trained run: TorchScript or ONNX, with a JSON sidecar.

:func:`export_model` (``dbloss export CHECKPOINT --format torchscript|onnx [--out FILE]``) writes a
module that maps preprocessed inputs to sigmoid scores, ``(B, 3, S, S)`` images (or ``(B, D)``
features for feature models) -> ``(B, C)``, with a dynamic batch dimension, and beside it
``<file>.json``: the class names, the run's thresholds, the input shape and the preprocessing that
the caller must apply (resize to S x S, aspect not kept, antialiased; scale to [0, 1]; normalise
with ``mean`` / ``std``: :func:`dbloss.data.transforms.eval_transform`).

The model comes from :meth:`dbloss.apps.predict.Predictor.from_checkpoint` (the engine's one builder),
so an exported file answers exactly as ``dbloss predict`` does. After writing, the file is loaded
back (``torch.jit.load`` / onnxruntime) and its scores on a batch of another size than the one
exported with are compared with the checkpoint's; the difference is in the sidecar (``check``) and
a mismatch above ``atol`` is an error.

ONNX needs the optional dependencies onnx and onnxscript (the exporter) and onnxruntime (the
check): ``pip install 'dbloss[export]'``. TorchScript is deprecated upstream (PyTorch warns on
``torch.jit.trace``); it is kept for runtimes that load it (LibTorch), and ONNX is the format to prefer.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dbloss.models.backbones import MissingDependencyError
from dbloss.errors import UsageError
from dbloss.files import write_json

__all__ = ["ExportResult", "ScoreModel", "export_metadata", "export_model"]

log = logging.getLogger(__name__)

ExportFormat = Literal["torchscript", "onnx"]
#: The default file name in the run folder, by format.
DEFAULT_NAMES: dict[str, str] = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
#: Batch sizes of the traced example and of the check afterwards (different, so that a batch size
#: baked into the graph is caught; neither 0 nor 1, which the exporters specialise).
_EXAMPLE_BATCH, _CHECK_BATCH = 2, 3
#: Models with more weight bytes than this keep their ONNX weights in a ``<file>.data`` beside the file.
_ONNX_INLINE_BYTES = 1 << 30


class ScoreModel(nn.Module):
    """A classifier's (B, ...) -> (B, C) logits as float32 sigmoid scores (what is exported)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.model(x).float())


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the model file, its JSON sidecar, and the check's largest
    score difference from the checkpoint (None when onnxruntime is not installed)."""

    path: Path
    sidecar: Path
    format: str
    max_abs_diff: float | None


def _example(predictor: Any, batch: int) -> Tensor:
    """A seeded random batch of what the exported model takes (preprocessed images or features)."""
    g = torch.Generator().manual_seed(batch)
    shape = (batch, predictor.in_features) if predictor.input_type == "features" else \
        (batch, 3, predictor.image_size, predictor.image_size)
    return torch.randn(shape, generator=g)


def _input_name(predictor: Any) -> str:
    """The ONNX input's name: ``images`` or ``features``."""
    return "features" if predictor.input_type == "features" else "images"


def export_metadata(predictor: Any, fmt: str, path: Path) -> dict[str, Any]:
    """The sidecar of an exported model: input, preprocessing, classes and thresholds."""
    import dbloss

    cfg = predictor.config
    meta: dict[str, Any] = {
        "format": fmt, "file": path.name, "dbloss": getattr(dbloss, "__version__", None), "torch": torch.__version__,
        "checkpoint": str(predictor.checkpoint), "input_name": _input_name(predictor),
        "output_name": "scores", "output": "(B, C) float32 sigmoid scores; a class is predicted when its score is "
        "above its threshold",
        "class_names": list(predictor.class_names),
        "thresholds": {"source": predictor.threshold_source, "values": predictor.thresholds.tolist()},
        "dataset": cfg.data.dataset, "backbone": cfg.model.backbone,
    }
    if predictor.input_type == "features":
        meta.update(input="features", input_shape=["batch", predictor.in_features])
        from dbloss.apps.embed import read_feature_meta

        if cfg.data.train_ann and Path(cfg.data.train_ann).is_file():  # which backbone made the training features, if recorded
            with contextlib.suppress(OSError, ValueError, KeyError):
                meta["features"] = read_feature_meta(cfg.data.train_ann) or None
    else:
        mean, std = predictor.normalisation
        size = predictor.image_size
        meta.update(input="images", input_shape=["batch", 3, size, size], image_size=size, mean=mean, std=std,
                    preprocessing=f"RGB; resize to {size} x {size} (aspect not kept, antialiased); scale to [0, 1]; "
                    f"subtract mean, divide by std (per channel); NCHW float32")
    return meta


def _need_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(f"`dbloss export --format onnx` needs the optional dependencies "
                                     f"{', '.join(missing)}; install them with `pip install 'dbloss[export]'`")


def _export_torchscript(module: nn.Module, example: Tensor, out: Path) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream (see the module docstring): said once, there
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, example)
        traced.save(str(out))


def _export_onnx(module: nn.Module, example: Tensor, out: Path, name: str, opset: int | None,
                 external: bool) -> None:
    _need_onnx()
    from torch.export import Dim

    kwargs: dict[str, Any] = {} if opset is None else {"opset_version": opset}
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir")]  # the exporter's INFO lines on each pass
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # and its progress lines
            torch.onnx.export(module, (example,), str(out), dynamo=True, dynamic_shapes=({0: Dim("batch")},),
                              input_names=[name], output_names=["scores"], verbose=False,
                              external_data=external, **kwargs)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def _run_exported(fmt: str, path: Path, x: Tensor) -> Tensor | None:
    """The exported file's scores on ``x``; None when its runtime (onnxruntime) is not installed."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.inference_mode():
            return loaded(x)
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed: %s was not checked (pip install 'dbloss[export]')", path)
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def export_model(
    checkpoint: str | Path,
    format: ExportFormat = "onnx",
    out: str | Path | None = None,
    *,
    atol: float = 1e-5,
    opset: int | None = None,
) -> ExportResult:
    """Export a run's model (see the module docstring); returns what was written.

    Args:
        checkpoint: a run folder (``best.pt`` if present, else ``checkpoint.pt``) or a checkpoint file.
        format: ``"onnx"`` (default) or ``"torchscript"``.
        out: the file to write. Default: ``model.onnx`` / ``model.torchscript.pt`` in the
            checkpoint's folder. The sidecar is ``<out>.json``.
        atol: the largest score difference from the checkpoint that the check accepts. Default 1e-5.
        opset: ONNX opset version (default: the exporter's).

    Raises:
        UsageError: an unknown format, not a dbloss checkpoint (:func:`dbloss.apps.predict.read_checkpoint`),
            the exported model's scores differ from the checkpoint's by more than ``atol``.
        MissingDependencyError: ONNX without onnx / onnxscript installed.

    >>> res = export_model("runs/demo/erm", "onnx")  # doctest: +SKIP
    >>> res.path, res.sidecar  # doctest: +SKIP
    (PosixPath('runs/demo/erm/model.onnx'), PosixPath('runs/demo/erm/model.onnx.json'))
    """
    from dbloss.apps.predict import Predictor

    if format not in DEFAULT_NAMES:
        raise UsageError(f"Expected `format` to be one of {tuple(DEFAULT_NAMES)}, but got {format!r}")
    if format == "onnx":
        _need_onnx()  # before any work
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    assert predictor.checkpoint is not None  # from_checkpoint sets it
    out = Path(out) if out is not None else predictor.checkpoint.parent / DEFAULT_NAMES[format]
    if out.suffix == ".json":
        raise UsageError(f"--out {out}: the model file cannot be a .json (the sidecar is <out>.json)")
    module = ScoreModel(predictor.model).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    # ONNX: one self-contained file, unless its protobuf limit (2 GiB) needs the weights beside it in <out>.data.
    # Written beside the target and renamed once checked (an external .data file names its model file: no rename).
    large = format == "onnx" and sum(t.numel() * t.element_size()
                                     for t in module.state_dict().values()) > _ONNX_INLINE_BYTES
    tmp = out if large else out.with_name(out.name + ".tmp")
    try:
        if format == "torchscript":
            _export_torchscript(module, _example(predictor, _EXAMPLE_BATCH), tmp)
        else:
            _export_onnx(module, _example(predictor, _EXAMPLE_BATCH), tmp, _input_name(predictor), opset, large)
        x = _example(predictor, _CHECK_BATCH)
        got = _run_exported(format, tmp, x)
        expected = predictor.scores(x)
        diff = None if got is None else float((got - expected).abs().max())
        if diff is not None and not diff <= atol:
            raise UsageError(f"the exported {format} model's scores differ from the checkpoint's by up to {diff:.2e} "
                             f"(> atol {atol:g}) on a batch of {_CHECK_BATCH}; {out} was not written")
        if tmp != out:
            tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if tmp != out:
            tmp.unlink(missing_ok=True)
    meta = export_metadata(predictor, format, out)
    meta["check"] = {"batch_size": _CHECK_BATCH, "exported_with_batch_size": _EXAMPLE_BATCH, "max_abs_diff": diff,
                     "atol": atol}
    sidecar = write_json(out.with_name(out.name + ".json"), meta)
    log.info("%s: %s model (%s -> scores), checked: max |diff| %s", out, format, meta["input_shape"],
             "n/a" if diff is None else f"{diff:.1e}")
    return ExportResult(out, sidecar, format, diff)
