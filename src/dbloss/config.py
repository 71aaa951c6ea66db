"""Training recipes: a configuration in sections, YAML files in ``configs/``, ``section.key=value`` overrides.

A recipe is a YAML mapping of sections, each a small dataclass: ``run``, ``data``, ``model``,
``method``, ``loss``, ``sampler``, ``optim``, ``schedule`` and ``eval``. A knob lives in the section
of the thing it changes; ``method`` holds the method's name and that method's own options, which
the method's ``Options`` dataclass checks (:mod:`dbloss.methods`)::

    optim:
      lr: 0.05
    method:
      name: ml-gcn
      hidden: 512

``load_config(name_or_path, overrides)`` reads a recipe (a path, or a name such as
``voc_mlt/db_focal`` looked up in the shipped ``configs/`` folder), applies overrides such as
``schedule.epochs=2`` or ``loss.args.mu=0.2`` (values parsed as YAML), validates every key and
returns the resolved :class:`TrainConfig`, which the trainer saves beside the run as
``config.yaml`` (fully resolved: no ``base`` key).

A recipe may name a base with ``base: FILE`` (relative to the recipe): the base is read first and
the recipe's sections are applied over it key by key, as overrides are: ``optim: {lr: 0.1}``
changes the rate and keeps the base's other ``optim`` keys; ``loss.args.mu: 0.2`` changes one loss
argument and keeps the others, ``loss: {args: {...}}`` replaces them. A base may have a base of its
own; a cycle or a missing file is an error naming the files. Files whose name starts with ``_`` are
bases, not recipes (``list_recipes`` leaves them out).

Recipes and run folders written before the sections (one flat mapping: ``lr: 0.1``,
``head: ml-gcn``) are still read: each flat key is converted to its section (:data:`FLAT_KEYS`,
the method keys by :func:`method_from_flat`) and a note names the conversions.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from dbloss.methods import METHODS, method_options
from dbloss.stats import DEFAULT_HEAD_MIN, DEFAULT_TAIL_MAX

__all__ = ["DataConfig", "EvalConfig", "FLAT_KEYS", "LossConfig", "MethodConfig", "ModelConfig", "OptimConfig",
           "RunConfig", "SECTIONS", "SamplerConfig", "ScheduleConfig", "TrainConfig", "flat_view", "list_recipes",
           "load_config", "method_from_flat", "recipe_dir", "save_config", "saved_config_matches"]

log = logging.getLogger(__name__)

DatasetKind = Literal["demo", "voc", "coco", "coco-json", "csv", "reuters", "features", "text-csv"]


@dataclass
class RunConfig:
    """Where a run writes, its seed and device, and the checks and numerics of its training loop."""

    name: str = "run"
    out_dir: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    # a run whose outputs collapse to one constant (the same scores for every sample: a dead network) stops
    # with the likely cause and the fix ("stop"), or only warns ("warn"); a loss that does not fall and a
    # validation mAP at chance level are always warned about ("off": no checks). A non-finite loss always stops.
    health: Literal["stop", "warn", "off"] = "stop"
    log_interval: int = 10
    tensorboard: bool = True
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = True  # only applied on CUDA
    compile: bool = False


@dataclass
class DataConfig:
    """What is read and how: the dataset, its files, the validation split, transforms and loaders."""

    dataset: DatasetKind = "demo"
    root: str | None = None  # VOCdevkit / COCO root / demo data folder / Reuters SGML folder
    train_ann: str | None = None  # coco-json / csv / features / text-csv: training annotation or feature file
    test_ann: str | None = None
    # features: the labels of a sparse feature file (scipy.sparse.save_npz holds no labels): a .npy / .npz
    # (`labels`, optional `class_names`) or a CSV of 0/1 columns; null: looked for beside the feature file
    train_labels: str | None = None
    test_labels: str | None = None
    # text-csv: the column holding each document's text, and its labels: a column of label lists joined by
    # `label_sep` (null: every column but the text and `id` is one 0/1 column per class)
    text_column: str = "text"
    label_column: str | None = None
    label_sep: str = ";"
    train_images: str | None = None  # image folder for coco-json / csv
    test_images: str | None = None
    subset: str | None = None  # an image-id list (e.g. the published VOC-MLT / COCO-MLT lists)
    use_difficult: bool = True  # VOC: count "difficult" objects as positives (the original work does)
    # hold out this many training samples (an int), or this fraction of them (a float in (0, 1)), as the
    # validation split that thresholds, keep_best / patience and `dbloss tune` are chosen on (0: none)
    val_size: int | float = 0
    image_size: int = 224
    augment: bool = True  # the paper's training augmentation (off: plain resize, as for evaluation)
    photometric: bool = True  # its photometric distortion (brightness, contrast, saturation, hue)
    skip_corrupt: bool = False
    workers: int = -1  # -1: min(8, cpu count - 1) on CUDA, min(2, cpu count - 1) on CPU
    persistent_workers: bool = False
    pin_memory: bool | None = None  # None: on when training on CUDA
    # text features (Reuters): "huang" is scikit-learn's CountVectorizer + TfidfTransformer at their
    # defaults (raw counts, smooth idf, l2 norm, every term of the training documents: Huang et al.'s
    # SVM features); "sublinear" is this project's earlier choice (sublinear tf, min_df 2, accents
    # stripped), which drops the rare words the tail classes live on. Both fitted on the training split.
    text_features: Literal["huang", "sublinear"] = "huang"
    tfidf_max_features: int | None = None  # keep only the most frequent terms (None: the whole vocabulary)


@dataclass
class ModelConfig:
    """The network before the method changes it: backbone, its weights and frozen stages, neck, classifier bias."""

    backbone: str = "resnet50"
    weights: str | None = "DEFAULT"
    frozen_stages: int | None = None  # None: 1 (the paper's) with pretrained weights, 0 from scratch
    neck_dim: int = 256
    dropout: float = 0.5
    # the linear classifier's initial bias: "default" (torch's, about 0: every class starts at a prior of 1/2), or
    # "prior" (the log-odds of each class's training prior, training.engine.prior_bias_; configs/features/ use it)
    bias_init: Literal["default", "prior"] = "default"


@dataclass
class MethodConfig:
    """The method (:data:`dbloss.methods.METHODS`) and its own options, an instance of its ``Options``
    dataclass: ``plain`` (none), ``ml-gcn``, ``oltr``, ``bbn``, ``decoupling``."""

    name: str = "plain"
    options: Any = None  # the method's Options; None: its defaults

    def __post_init__(self) -> None:
        if self.options is None and self.name in METHODS:
            self.options = METHODS[self.name].Options()

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **options}`` (a nested method, e.g. decoupling's classifier, likewise)."""
        return {"name": self.name, **_options_dict(self.options)}


@dataclass
class LossConfig:
    """The loss (:func:`dbloss.losses.build_loss`) and its arguments (``args``, e.g. ``{mu: 0.2}``)."""

    name: str = "db-focal"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplerConfig:
    """How training samples are drawn: uniformly (``random``) or class-aware, and an epoch's length."""

    name: Literal["random", "class-aware"] = "class-aware"
    num_samples_cls: int = 1
    # the class-aware epoch: "data" draws as many samples as the training split holds, so that `epochs`,
    # `lr_steps` and warm-up mean the same on 14 classes and on 5,000; "paper" draws the original work's
    # int(max class count x classes / reduce) (the VOC-MLT / COCO-MLT / demo recipes keep it)
    epoch: Literal["data", "paper"] = "data"
    reduce: int = 4


@dataclass
class OptimConfig:
    """The optimiser and the global batch it steps on."""

    name: Literal["sgd", "adamw"] = "sgd"  # sgd: the paper's; adamw (decoupled weight decay; momentum unused)
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = 35.0
    batch_size: int = 32  # global batch: divided among distributed ranks


@dataclass
class ScheduleConfig:
    """How long training runs and how the rate moves: epochs, warm-up, step decays."""

    epochs: int = 8
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3
    lr_steps: list[float] = field(default_factory=lambda: [0.625, 0.875])  # fractions of `epochs`: 5/8, 7/8
    lr_gamma: float = 0.1


@dataclass
class EvalConfig:
    """How a run is scored and what is chosen on its validation split."""

    threshold: float = 0.5
    threshold_search: list[float] | None = None  # [low, high, step]: pick a global threshold on the val split
    # per-class thresholds (chosen on the val split for each class's F1, stored in the checkpoint and used
    # by predict): a class with fewer validation positives than this keeps the global threshold
    min_val_positives: int = 5
    keep_best: bool = False  # score the val split after every epoch; test the epoch with the best `monitor`
    patience: int = 0  # with keep_best: stop after this many epochs without a better `monitor` (0: never)
    monitor: Literal["mAP", "micro_f1"] = "mAP"  # the validation score keep_best / patience / tune follow
    batch_size: int = 64
    head_min: int = DEFAULT_HEAD_MIN  # the head / medium / tail groups of the tables (dbloss.stats.class_split)
    tail_max: int = DEFAULT_TAIL_MAX


#: The sections of a configuration and their dataclasses, in the order they are saved.
SECTIONS: dict[str, type] = {"run": RunConfig, "data": DataConfig, "model": ModelConfig, "method": MethodConfig,
                             "loss": LossConfig, "sampler": SamplerConfig, "optim": OptimConfig,
                             "schedule": ScheduleConfig, "eval": EvalConfig}


@dataclass
class TrainConfig:
    """Everything a training run needs, in sections (:data:`SECTIONS`)."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "TrainConfig":
        """Check types and value ranges; raise ``ValueError`` naming the key (``section.key``)."""
        for section in SECTIONS:
            if section != "method":
                _coerce_section(section, getattr(self, section))
        self.method.options = _build_options(self.method.name, _options_dict(self.method.options), "method")
        _check_ranges(self)
        METHODS[self.method.name](self.method.options).check(self)
        return self

    def replace(self, **sections: dict[str, Any]) -> "TrainConfig":
        """A copy with some keys changed, e.g. ``cfg.replace(optim={"lr": 0.1})`` (not validated:
        a training stage's configuration may hold values no recipe may, such as 0 epochs)."""
        new = self.copy()
        for section, values in sections.items():
            setattr(new, section, dataclasses.replace(getattr(new, section), **values))
        return new

    def copy(self) -> "TrainConfig":
        """A deep copy (no section shared with ``self``)."""
        return from_dict(self.to_dict(), validate=False)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain types, section by section (what ``config.yaml`` holds)."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            value = getattr(self, section)
            out[section] = value.to_dict() if isinstance(value, MethodConfig) else _plain(dataclasses.asdict(value))
        return out

    def to_yaml(self) -> str:
        """The resolved configuration as YAML, sections in order (what ``save_config`` writes)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    """Lists and dicts copied (a saved configuration shares nothing with the live one)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _options_dict(options: Any) -> dict[str, Any]:
    """A method's options as a plain mapping (a nested :class:`MethodConfig` as its ``to_dict``)."""
    if options is None:
        return {}
    if isinstance(options, dict):
        return _plain(options)
    return {f.name: (v.to_dict() if isinstance(v := getattr(options, f.name), MethodConfig) else _plain(v))
            for f in dataclasses.fields(options)}


# ---------------------------------------------------------------------------------------------
# Keys: the sections' fields, the old flat names, the closest match of an unknown key
# ---------------------------------------------------------------------------------------------

def _section_keys(section: str) -> list[str]:
    if section == "method":
        return ["name"]
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def all_keys() -> list[str]:
    """Every ``section.key`` (the method's options are the chosen method's: see its section)."""
    return [f"{s}.{k}" for s in SECTIONS for k in _section_keys(s)]


#: The flat keys of configurations written before the sections, and where each lives now (the
#: method's keys, ``head`` ... ``tau_norm``, are converted together by :func:`method_from_flat`).
FLAT_KEYS: dict[str, str] = {
    **{k: f"run.{k}" for k in ("name", "out_dir", "seed", "device", "health", "log_interval", "tensorboard", "amp",
                               "channels_last", "compile")},
    **{k: f"data.{k}" for k in _section_keys("data") if k != "root"}, "data_root": "data.root",
    **{k: f"model.{k}" for k in _section_keys("model")},
    "loss": "loss.name", "loss_args": "loss.args",
    "sampler": "sampler.name", "num_samples_cls": "sampler.num_samples_cls", "sampler_epoch": "sampler.epoch",
    "sampler_reduce": "sampler.reduce",
    "optimizer": "optim.name", **{k: f"optim.{k}" for k in ("lr", "momentum", "weight_decay", "grad_clip",
                                                             "batch_size")},
    **{k: f"schedule.{k}" for k in _section_keys("schedule")},
    **{k: f"eval.{k}" for k in ("threshold", "threshold_search", "min_val_positives", "keep_best", "patience",
                                "monitor", "head_min", "tail_max")}, "eval_batch_size": "eval.batch_size",
}
#: The flat method keys and their defaults then (a flat configuration names the method by ``head`` and ``decoupling``).
FLAT_METHOD_KEYS: dict[str, Any] = {
    "head": "linear", "label_embeddings": None, "gcn_tau": 0.4, "gcn_p": 0.2, "gcn_hidden": 1024,
    "oltr_attention": True, "oltr_centroid_weight": 0.01, "bbn_sampler": "reversed", "decoupling": "none",
    "stage2_epochs": 0, "stage2_sampler": "class-aware", "stage2_lr": None, "tau_norm": 1.0}
_GCN = {"label_embeddings": "label_embeddings", "gcn_tau": "tau", "gcn_p": "p", "gcn_hidden": "hidden"}
_STAGE2 = {"stage2_epochs": "stage2_epochs", "stage2_sampler": "stage2_sampler", "stage2_lr": "stage2_lr"}


def method_from_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """The ``method`` section of a flat configuration's method keys (:data:`FLAT_METHOD_KEYS`); only
    the keys it set are carried over, the rest keep the method's defaults.

    >>> method_from_flat({"head": "ml-gcn", "gcn_hidden": 16, "decoupling": "crt", "stage2_epochs": 2})
    {'name': 'decoupling', 'mode': 'crt', 'stage2_epochs': 2, 'stage2_sampler': 'class-aware', 'stage2_lr': None, \
'classifier': {'name': 'ml-gcn', 'hidden': 16}}
    """
    head, decoupling = flat.get("head", "linear"), flat.get("decoupling", "none")
    gcn = {new: flat[old] for old, new in _GCN.items() if old in flat}
    # the stage-2 keys at their flat defaults (0 epochs, ...), which the method's own defaults are not
    stage2 = {new: flat.get(old, FLAT_METHOD_KEYS[old]) for old, new in _STAGE2.items()}
    if decoupling != "none":
        classifier = {"name": "ml-gcn", **gcn} if head == "ml-gcn" else {"name": "plain"}
        tau = {"tau": flat["tau_norm"]} if "tau_norm" in flat else {}
        return {"name": "decoupling", "mode": decoupling, **stage2, **tau, "classifier": classifier}
    if head == "ml-gcn":
        return {"name": "ml-gcn", **gcn}
    if head == "oltr":
        extra = {new: flat[old] for old, new in (("oltr_attention", "attention"),
                                                 ("oltr_centroid_weight", "centroid_weight")) if old in flat}
        return {"name": "oltr", **extra, **stage2}
    if head == "bbn":
        return {"name": "bbn", **({"sampler": flat["bbn_sampler"]} if "bbn_sampler" in flat else {})}
    return {"name": "plain"}


def _method_to_flat(method: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`method_from_flat` (the flat keys a ``method`` section stands for)."""
    name = method.get("name", "plain")
    inverse_gcn = {new: old for old, new in _GCN.items()}
    if name == "decoupling":
        classifier = method.get("classifier", {"name": "plain"})
        classifier = {"name": classifier} if isinstance(classifier, str) else dict(classifier)
        out = {"decoupling": method.get("mode", "crt"), **{k: method[k] for k in _STAGE2 if k in method},
               **({"tau_norm": method["tau"]} if "tau" in method else {})}
        if classifier.get("name") == "ml-gcn":
            out["head"] = "ml-gcn"
            out.update({inverse_gcn[k]: v for k, v in classifier.items() if k in inverse_gcn})
        return out
    if name == "ml-gcn":
        return {"head": "ml-gcn", **{inverse_gcn[k]: v for k, v in method.items() if k in inverse_gcn}}
    if name == "oltr":
        return {"head": "oltr", **{f"oltr_{k}": method[k] for k in ("attention", "centroid_weight") if k in method},
                **{k: method[k] for k in _STAGE2 if k in method}}
    if name == "bbn":
        return {"head": "bbn", **({"bbn_sampler": method["sampler"]} if "sampler" in method else {})}
    return {"head": "linear"} if name == "plain" else {"head": name}


def flat_view(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as the flat mapping of the configurations before the sections (every key, the
    method's included): what a configuration resolved to then can be compared with it."""
    out: dict[str, Any] = {}
    sections = cfg.to_dict()
    for flat, dotted in FLAT_KEYS.items():
        section, key = dotted.split(".")
        out[flat] = sections[section][key]
    return {**out, **FLAT_METHOD_KEYS, **_method_to_flat(sections["method"])}


def _suggest(key: str, candidates: Sequence[str]) -> str:
    """The closest valid keys to a mistyped one, by their full name and by their last part."""
    leaves: dict[str, list[str]] = {}
    for c in candidates:
        leaves.setdefault(c.rsplit(".", 1)[-1], []).append(c)
    close = difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    for leaf in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=3, cutoff=0.6):
        close += [c for c in leaves[leaf] if c not in close]
    return f"; did you mean {' or '.join(close[:3])}?" if close else ""


def _unknown(source: str, key: str, section: str | None = None, valid: Sequence[str] = ()) -> ValueError:
    if section is None:
        return ValueError(f"{source}: unknown configuration key {key!r}{_suggest(key, all_keys())} (sections: "
                          f"{', '.join(SECTIONS)}; `dbloss train RECIPE --print-config` shows every key)")
    full = [f"{section}.{k}" for k in valid]
    return ValueError(f"{source}: unknown configuration key {key!r} in section `{section}`"
                      f"{_suggest(key, full)}; valid keys of `{section}`: {', '.join(valid)}")


# ---------------------------------------------------------------------------------------------
# Reading: raw sections, merged key by key
# ---------------------------------------------------------------------------------------------

class _Raw:
    """The sections being resolved, as plain mappings, and the flat keys converted on the way."""

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        self.flat_method: dict[str, Any] = {}
        self.converted: dict[str, list[str]] = {}

    def apply(self, key: str, value: Any, source: str) -> None:
        """One key (``section``, ``section.key``, ``section.key.sub``, or an old flat key) and its value."""
        parts = key.split(".")
        top = parts[0]
        if top in SECTIONS and not (len(parts) == 1 and top in FLAT_KEYS and not isinstance(value, dict)):
            if len(parts) == 1:
                if top == "method" and isinstance(value, str):  # `method: bbn`, the method with its defaults
                    value = {"name": value}
                if not isinstance(value, dict):
                    raise ValueError(f"{source}: expected section `{top}` to be a mapping of its keys "
                                     f"({', '.join(_section_keys(top))}, ...), but got {value!r}")
                for k in sorted(value, key=lambda k: k != "name"):  # a method's name before its options
                    self._set(top, [str(k)], value[k], source)
            else:
                self._set(top, parts[1:], value, source)
        elif top in FLAT_KEYS:
            section, new = FLAT_KEYS[top].split(".")
            self.converted.setdefault(source, []).append(f"{top} -> {section}.{new}")
            self._set(section, [new, *parts[1:]], value, source)
        elif top in FLAT_METHOD_KEYS and len(parts) == 1:
            self.converted.setdefault(source, []).append(f"{top} -> method")
            self.flat_method[top] = value
        else:
            raise _unknown(source, key)

    def _set(self, section: str, path: list[str], value: Any, source: str) -> None:
        if section == "method":
            self._flush()  # old flat method keys given before this key apply first
        data = self.sections[section]
        key = path[0]
        if section == "method":
            if key == "name" and len(path) == 1:
                if value != data.get("name", "plain"):  # another method: the previous one's options do not apply
                    data.clear()
                data["name"] = value
                return
        elif key not in _section_keys(section):
            raise _unknown(source, ".".join([section, *path]), section, _section_keys(section))
        if len(path) == 1:
            data[key] = _plain(value)
            return
        if not (section == "loss" and key == "args" or section == "method") or len(path) > 3:
            raise ValueError(f"{source}: only `loss.args` and a method's mapping options take a further "
                             f"dotted key, but got {'.'.join([section, *path])!r}")
        inner = data.get(key)
        inner = {"name": inner} if isinstance(inner, str) else dict(inner or {})
        if len(path) == 3:
            sub = dict(inner.get(path[1]) or {})
            sub[path[2]] = _plain(value)
            inner[path[1]] = sub
        else:
            inner[path[1]] = _plain(value)
        data[key] = inner

    def _flush(self) -> None:
        """Old flat method keys (collected together: ``gcn_hidden`` may come before ``head``), over the section."""
        if self.flat_method:
            flat = {**_method_to_flat(self.sections["method"]), **self.flat_method}
            self.sections["method"] = method_from_flat(flat)
            self.flat_method = {}

    def finish(self) -> dict[str, dict[str, Any]]:
        self._flush()
        for source, keys in self.converted.items():
            log.warning("%s: flat configuration keys converted to sections (%s); write them as section.key",
                        source, ", ".join(keys))
        return self.sections


def _upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration saved by an earlier version, in today's terms: ``lr_steps`` were absolute
    epochs (e.g. ``[5, 7]`` of 8) and become fractions of ``epochs`` (flat or sectioned)."""
    schedule = data.get("schedule") if isinstance(data.get("schedule"), dict) else data
    steps, epochs = schedule.get("lr_steps"), schedule.get("epochs", 8)
    if isinstance(steps, list) and steps and all(isinstance(v, (int, float)) and v >= 1 for v in steps):
        upgraded = {**schedule, "lr_steps": [min(float(v) / epochs, 0.999) for v in steps]}
        return {**data, "schedule": upgraded} if schedule is not data else upgraded
    return data


# ---------------------------------------------------------------------------------------------
# Checking: types, ranges, the method's options
# ---------------------------------------------------------------------------------------------

def _val_size(value: Any) -> int | float:
    """``data.val_size`` checked: a count (int >= 0) or a fraction (float in (0, 1)); a float that is a
    whole number (YAML's ``1000.0``) is a count.

    >>> _val_size(0.1), _val_size(1000), _val_size(1000.0)
    (0.1, 1000, 1000)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Expected `data.val_size` to be a count (int >= 0) or a fraction in (0, 1), but got "
                         f"{value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value < 0 or (isinstance(value, float) and not 0.0 < value < 1.0):
        raise ValueError(f"Expected `data.val_size` to be a count (int >= 0) or a fraction in (0, 1), but got "
                         f"{value!r}")
    return value


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Convert ``value`` to the field's type where that is lossless (YAML reads ``1e-4`` as a string,
    ``2`` as an int for a float field); raise ``ValueError`` naming the field otherwise (a
    ``Literal`` field lists its valid values)."""
    base = hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in typing.get_args(hint):
            return None
        base = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        if base is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if base is bool and isinstance(value, bool):
            return value
        if base is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    except ValueError:
        pass
    if typing.get_origin(base) is Literal:
        if value in typing.get_args(base):
            return value
        raise ValueError(f"Expected `{name}` to be one of {typing.get_args(base)}, but got {value!r}")
    if typing.get_origin(base) in (list, dict):
        if isinstance(value, typing.get_origin(base)):
            return value
        raise ValueError(f"Expected `{name}` to be a {typing.get_origin(base).__name__}, but got {value!r}")
    if base in (float, int, bool, str):
        raise ValueError(f"Expected `{name}` to be {base.__name__}, but got {value!r}")
    return value


def _coerce_section(section: str, obj: Any) -> None:
    for name, hint in typing.get_type_hints(type(obj)).items():
        if (section, name) != ("data", "val_size"):  # a count or a fraction: _val_size checks it
            setattr(obj, name, _coerce(f"{section}.{name}", hint, getattr(obj, name)))


def _build_options(name: Any, values: dict[str, Any], where: str) -> Any:
    """A method's ``Options`` from a mapping: unknown keys named with the method's valid ones, values
    coerced to their types, a nested method (decoupling's ``classifier``) built the same way."""
    if name not in METHODS:
        raise ValueError(f"Expected `{where}.name` to be one of {tuple(METHODS)}, but got {name!r}"
                         f"{_suggest(str(name), list(METHODS))}")
    options_type = method_options(name)
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    hints = typing.get_type_hints(options_type)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key == "name":
            continue
        if key not in fields:
            raise _unknown(f"method {name!r}", f"{where}.{key}", where, ["name", *fields])
        kwargs[key] = _coerce(f"{where}.{key}", hints[key], value)
    for key, f in fields.items():  # a nested method (decoupling's classifier): a name or a mapping
        if f.metadata.get("method"):
            value = kwargs.get(key)
            nested = value.to_dict() if isinstance(value, MethodConfig) else \
                {"name": value or "plain"} if value is None or isinstance(value, str) else dict(value)
            inner = nested.get("name", "plain")
            if inner not in f.metadata["method"]:
                raise ValueError(f"Expected `{where}.{key}` to be one of {f.metadata['method']}, but got {inner!r}")
            kwargs[key] = MethodConfig(inner, _build_options(inner, nested, f"{where}.{key}"))
    options = options_type(**kwargs)
    check = getattr(options, "validate", None)
    if check is not None:
        check()
    return options


def _check_ranges(cfg: TrainConfig) -> None:
    """The value ranges the sections' types cannot say."""
    for dotted in ("schedule.epochs", "optim.batch_size", "eval.batch_size", "data.image_size",
                   "sampler.num_samples_cls", "sampler.reduce"):
        s, k = dotted.split(".")
        if getattr(getattr(cfg, s), k) < 1:
            raise ValueError(f"Expected `{dotted}` >= 1, but got {getattr(getattr(cfg, s), k)!r}")
    cfg.data.val_size = _val_size(cfg.data.val_size)
    for dotted in ("optim.lr", "optim.weight_decay", "optim.momentum", "schedule.warmup_iters", "model.dropout"):
        s, k = dotted.split(".")
        if getattr(getattr(cfg, s), k) < 0:
            raise ValueError(f"Expected `{dotted}` >= 0, but got {getattr(getattr(cfg, s), k)!r}")
    if cfg.data.tfidf_max_features is not None and cfg.data.tfidf_max_features < 1:
        raise ValueError(f"Expected `data.tfidf_max_features` >= 1 or null (the whole vocabulary), but got "
                         f"{cfg.data.tfidf_max_features!r}")
    if cfg.model.frozen_stages is not None and cfg.model.frozen_stages < 0:
        raise ValueError(f"Expected `model.frozen_stages` >= 0 or null, but got {cfg.model.frozen_stages!r}")
    ev = cfg.eval
    if not 0.0 < ev.threshold < 1.0:
        raise ValueError(f"Expected 0 < `eval.threshold` < 1, but got {ev.threshold!r}")
    if ev.min_val_positives < 1:
        raise ValueError(f"Expected `eval.min_val_positives` >= 1, but got {ev.min_val_positives!r}")
    if ev.threshold_search is not None and len(ev.threshold_search) != 3:
        raise ValueError(f"Expected `eval.threshold_search` = [low, high, step], but got {ev.threshold_search!r}")
    if ev.keep_best and not cfg.data.val_size:
        raise ValueError("Expected `data.val_size` > 0 with `eval.keep_best` (the best epoch is chosen on the "
                         "validation split), but got data.val_size=0")
    if ev.patience < 0:
        raise ValueError(f"Expected `eval.patience` >= 0, but got {ev.patience!r}")
    if ev.patience and not ev.keep_best:
        raise ValueError(f"Expected `eval.keep_best=true` with `eval.patience` (early stopping watches the "
                         f"validation split), but got patience={ev.patience} and keep_best=false")
    steps = [float(v) for v in cfg.schedule.lr_steps]
    if any(not 0.0 < v < 1.0 for v in steps):
        raise ValueError(f"Expected `schedule.lr_steps` as fractions of training in (0, 1) (the paper's "
                         f"[0.625, 0.875]: epochs 5 and 7 of 8, whatever `epochs` is), but got "
                         f"{cfg.schedule.lr_steps!r}")
    if sorted(steps) != steps:
        raise ValueError(f"Expected `schedule.lr_steps` in increasing order, but got {cfg.schedule.lr_steps!r}")
    cfg.schedule.lr_steps = steps


def from_dict(sections: dict[str, dict[str, Any]], *, validate: bool = True) -> TrainConfig:
    """A :class:`TrainConfig` from resolved sections (plain mappings, missing keys at their defaults)."""
    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values = dict(sections.get(section) or {})
        if section == "method":  # its options as a mapping, built (and checked) by validate()
            name = values.pop("name", "plain")
            built[section] = MethodConfig(name, values if validate else _build_options(name, values, "method"))
        else:
            built[section] = cls(**values)
    cfg = TrainConfig(**built)
    return cfg.validate() if validate else cfg


# ---------------------------------------------------------------------------------------------
# Recipe files
# ---------------------------------------------------------------------------------------------

def recipe_dir() -> Path:
    """The folder of shipped recipes (``dbloss/configs`` inside the installed package)."""
    return Path(str(resources.files("dbloss") / "configs"))


def list_recipes() -> list[str]:
    """Names of the shipped recipes, e.g. ``["coco_mlt/db_focal", ..., "voc_mlt/rs"]``; bases
    (``_base.yaml`` and any file whose name starts with ``_``) are not recipes and are left out."""
    root = recipe_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml") if not p.name.startswith("_"))


def _resolve_recipe(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = recipe_dir() / f"{recipe}.yaml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"No recipe file {str(recipe)!r} and no shipped recipe of that name; "
                            f"shipped recipes: {', '.join(list_recipes())}")


#: The recipe key that names a base file (relative to the recipe); not a configuration key.
BASE_KEY = "base"


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of configuration keys, but got {type(loaded).__name__}")
    return loaded


def _recipe_chain(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The recipe file and its bases, the root base first, each with its own keys (``base`` removed)."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: list[Path] = []
    while True:
        if path.resolve() in seen:
            cycle = " -> ".join(str(p) for p, _ in chain) + f" -> {path}"
            raise ValueError(f"recipe bases form a cycle: {cycle}")
        seen.append(path.resolve())
        data = _read_mapping(path)
        parent = data.pop(BASE_KEY, None)
        chain.append((path, data))
        if parent is None:
            return chain[::-1]
        if not isinstance(parent, str) or not parent.strip():
            raise ValueError(f"{path}: expected `{BASE_KEY}` to be a file name relative to the recipe, "
                             f"but got {parent!r}")
        path = path.parent / parent
        if not path.is_file():
            raise FileNotFoundError(f"{chain[-1][0]}: base file {parent!r} not found (looked for {path})")


def load_config(recipe: str | Path | None = None, overrides: Sequence[str] = (), *,
                base: dict[str, Any] | None = None, **kwargs: Any) -> TrainConfig:
    """Resolve a recipe: ``base`` (e.g. a checkpoint's saved configuration), the YAML file (or
    shipped name) over its chain of ``base:`` files, then ``section.key=value`` overrides, then
    ``kwargs`` (``section={"key": value}``, or ``section__key=value``).

    >>> cfg = load_config(None, ["schedule.epochs=2", "loss.name=bce"])
    >>> cfg.schedule.epochs, cfg.loss.name
    (2, 'bce')
    """
    raw = _Raw()
    for k, v in _upgrade_saved(dict(base or {})).items():
        raw.apply(str(k), v, "saved configuration")
    if recipe is not None:
        for path, loaded in _recipe_chain(_resolve_recipe(recipe)):
            for k, v in loaded.items():
                raw.apply(str(k), v, str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Override {item!r} is not of the form key=value (e.g. optim.lr=0.1)")
        raw.apply(key.strip(), yaml.safe_load(value), "override")
    for k, v in kwargs.items():
        raw.apply(k.replace("__", "."), v, "argument")
    try:
        return from_dict(raw.finish())
    except TypeError as e:
        raise ValueError(str(e)) from None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (no ``base``: a saved file stands alone)."""
    Path(path).write_text(cfg.to_yaml())


#: Keys that only text datasets read: an image run is the same run whatever they say.
_TEXT_KEYS = ("text_features", "tfidf_max_features")
_TEXT_DATASETS = ("reuters", "text-csv")


def saved_config_matches(cfg: TrainConfig, path: str | Path) -> bool:
    """Whether the configuration saved at ``path`` (a run's ``config.yaml``, sectioned or flat)
    describes the same run as ``cfg``: equal key by key, a key added since it was saved counting
    with its default, and text-feature keys ignored for an image dataset. False for a missing,
    unreadable or invalid file."""
    try:
        old = yaml.safe_load(Path(path).read_text())
        if not isinstance(old, dict):
            return False
        saved = load_config(None, base=old).to_dict()
    except (OSError, yaml.YAMLError, ValueError, TypeError):
        return False
    new = yaml.safe_load(cfg.to_yaml())
    if cfg.data.dataset not in _TEXT_DATASETS:
        for d in (saved, new):
            d["data"] = {k: v for k, v in d["data"].items() if k not in _TEXT_KEYS}
    return saved == new
