"""Training recipes: one flat dataclass, YAML files in ``configs/``, ``key=value`` overrides.

A recipe is a YAML mapping of :class:`TrainConfig` fields. ``load_config(name_or_path,
overrides)`` reads it (a path, or a name such as ``voc_mlt/db_focal`` looked up in the shipped
``configs/`` folder), applies overrides such as ``epochs=2`` or ``loss_args.mu=0.2`` (values
parsed as YAML), validates every key and returns the resolved configuration, which the trainer
saves beside the run as ``config.yaml`` (fully resolved: no ``base`` key).

A recipe may name a base with ``base: FILE`` (a path relative to the recipe): the base is read
first and the recipe's keys are applied over it, the same way ``key=value`` overrides are applied
over the recipe: a key replaces the base's value, ``loss_args.mu: 0.2`` changes one loss argument
and keeps the others. A base may have a base of its own; a cycle or a missing file is an error
naming the files. Each benchmark folder keeps what its rows share in ``_base.yaml``; files whose
name starts with ``_`` are bases, not recipes (``list_recipes`` leaves them out).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from dbloss.stats import DEFAULT_HEAD_MIN, DEFAULT_TAIL_MAX

__all__ = ["TrainConfig", "load_config", "list_recipes", "recipe_dir", "save_config", "saved_config_matches"]

DatasetKind = Literal["demo", "voc", "coco", "coco-json", "csv", "reuters", "features", "text-csv"]


@dataclass
class TrainConfig:
    """Everything a training run needs. Field groups: run, data, model, loss, sampling, optimisation."""

    # run
    name: str = "run"
    out_dir: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    # data
    dataset: DatasetKind = "demo"
    data_root: str | None = None  # VOCdevkit / COCO root / demo data folder / Reuters SGML folder
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
    # model
    backbone: str = "resnet50"
    weights: str | None = "DEFAULT"
    frozen_stages: int | None = None  # None: 1 (the paper's) with pretrained weights, 0 from scratch
    neck_dim: int = 256
    dropout: float = 0.5
    # the linear classifier's initial bias: "default" (torch's, about 0: every class starts at a prior of 1/2), or
    # "prior" (the log-odds of each class's training prior, engine.prior_bias_; configs/features/ use it)
    bias_init: Literal["default", "prior"] = "default"
    # classifier: "linear"; "ml-gcn" (Chen et al. 2019, dbloss.methods.ml_gcn: classifiers produced by a 2-layer GCN over
    # the training labels' co-occurrence graph from label embeddings); "oltr" (Liu et al. 2019, dbloss.methods.oltr: a
    # second stage of stage2_epochs with modulated attention and the meta-embedding classifier over the class
    # centroids); "bbn" (Zhou et al. 2020, dbloss.methods.bbn: a conventional branch on `sampler` and a re-balancing
    # branch on `bbn_sampler`, mixed by cumulative learning)
    head: Literal["linear", "ml-gcn", "oltr", "bbn"] = "linear"
    label_embeddings: str | None = None  # ml-gcn: a .npy file (C x E, class order), e.g. GloVe; null: one-hot
    gcn_tau: float = 0.4  # ml-gcn: P(j | i) >= gcn_tau is an edge (the paper's 0.4)
    gcn_p: float = 0.2  # ml-gcn: the neighbours' share of each row (the paper's 0.2)
    gcn_hidden: int = 1024  # ml-gcn: width of the first graph convolution (the paper's 1024)
    oltr_attention: bool = True  # oltr: modulated attention on the backbone's last feature map (where it has one)
    oltr_centroid_weight: float = 0.01  # oltr: weight of the discriminative centroid loss (the release's 0.01)
    bbn_sampler: Literal["reversed", "class-aware"] = "reversed"  # bbn: the re-balancing branch's sampler
    # loss and sampling
    loss: str = "db-focal"
    loss_args: dict[str, Any] = field(default_factory=dict)
    sampler: Literal["random", "class-aware"] = "class-aware"
    num_samples_cls: int = 1
    # the class-aware epoch: "data" draws as many samples as the training split holds, so that `epochs`,
    # `lr_steps` and warm-up mean the same on 14 classes and on 5,000; "paper" draws the original work's
    # int(max class count x classes / sampler_reduce) (the VOC-MLT / COCO-MLT / demo recipes keep it)
    sampler_epoch: Literal["data", "paper"] = "data"
    sampler_reduce: int = 4
    head_min: int = DEFAULT_HEAD_MIN
    tail_max: int = DEFAULT_TAIL_MAX
    # decoupling (Kang et al. 2020, dbloss.methods.decoupling): after the `epochs` of stage 1, freeze all but the
    # classifier and re-train it (crt: re-initialised; lws: per-class scales) or tau-normalise it (tau-norm).
    # The stage2_* fields are also those of OLTR's second stage (head: oltr).
    decoupling: Literal["none", "crt", "lws", "tau-norm"] = "none"
    stage2_epochs: int = 0  # crt / lws / oltr: epochs of stage 2 (tau-norm trains nothing: 0)
    stage2_sampler: Literal["random", "class-aware"] = "class-aware"
    stage2_lr: float | None = None  # null: `lr`
    tau_norm: float = 1.0  # tau-norm: w_k / ||w_k||^tau_norm
    # optimisation
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd: the paper's; adamw (decoupled weight decay; momentum unused)
    epochs: int = 8
    batch_size: int = 32  # global batch: divided among distributed ranks
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3
    lr_steps: list[float] = field(default_factory=lambda: [0.625, 0.875])  # fractions of `epochs`: 5/8, 7/8
    lr_gamma: float = 0.1
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = True  # only applied on CUDA
    compile: bool = False
    # evaluation
    threshold: float = 0.5
    threshold_search: list[float] | None = None  # [low, high, step]: pick a global threshold on the val split
    # per-class thresholds (chosen on the val split for each class's F1, stored in the checkpoint and used
    # by predict): a class with fewer validation positives than this keeps the global threshold
    min_val_positives: int = 5
    keep_best: bool = False  # score the val split after every epoch; test the epoch with the best `monitor`
    patience: int = 0  # with keep_best: stop after this many epochs without a better `monitor` (0: never)
    monitor: Literal["mAP", "micro_f1"] = "mAP"  # the validation score keep_best / patience / tune follow
    # a run whose outputs collapse to one constant (the same scores for every sample: a dead network) stops
    # with the likely cause and the fix ("stop"), or only warns ("warn"); a loss that does not fall and a
    # validation mAP at chance level are always warned about ("off": no checks). A non-finite loss always stops.
    health: Literal["stop", "warn", "off"] = "stop"
    eval_batch_size: int = 64
    log_interval: int = 10
    tensorboard: bool = True

    def validate(self) -> "TrainConfig":
        """Check types and value ranges; raise ``ValueError`` naming the field."""
        for name, hint in typing.get_type_hints(TrainConfig).items():
            if name != "val_size":  # a count or a fraction: _val_size checks it
                setattr(self, name, _coerce(name, hint, getattr(self, name)))
        positive = ("epochs", "batch_size", "eval_batch_size", "image_size", "num_samples_cls", "sampler_reduce")
        for f in positive:
            if getattr(self, f) < 1:
                raise ValueError(f"Expected `{f}` >= 1, but got {getattr(self, f)!r}")
        self.val_size = _val_size(self.val_size)
        for f in ("lr", "weight_decay", "momentum", "warmup_iters", "dropout"):
            if getattr(self, f) < 0:
                raise ValueError(f"Expected `{f}` >= 0, but got {getattr(self, f)!r}")
        if self.sampler not in ("random", "class-aware"):
            raise ValueError(f"Expected `sampler` to be one of ('random', 'class-aware'), but got {self.sampler!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"Expected `optimizer` to be one of ('sgd', 'adamw'), but got {self.optimizer!r}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ValueError(f"Expected `amp` to be one of ('none', 'bf16', 'fp16'), but got {self.amp!r}")
        if self.text_features not in ("huang", "sublinear"):
            raise ValueError(f"Expected `text_features` to be one of ('huang', 'sublinear'), but got "
                             f"{self.text_features!r}")
        if self.tfidf_max_features is not None and self.tfidf_max_features < 1:
            raise ValueError(f"Expected `tfidf_max_features` >= 1 or null (the whole vocabulary), but got "
                             f"{self.tfidf_max_features!r}")
        kinds = DatasetKind.__args__  # type: ignore[attr-defined]
        if self.dataset not in kinds:
            raise ValueError(f"Expected `dataset` to be one of {kinds}, but got {self.dataset!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"Expected 0 < `threshold` < 1, but got {self.threshold!r}")
        if isinstance(self.min_val_positives, bool) or self.min_val_positives < 1:
            raise ValueError(f"Expected `min_val_positives` >= 1, but got {self.min_val_positives!r}")
        if self.threshold_search is not None and len(self.threshold_search) != 3:
            raise ValueError(f"Expected `threshold_search` = [low, high, step], but got {self.threshold_search!r}")
        if self.keep_best and not self.val_size:
            raise ValueError("Expected `val_size` > 0 with `keep_best` (the best epoch is chosen on the validation "
                             "split), but got val_size=0")
        steps = [float(v) for v in self.lr_steps]
        if any(not 0.0 < v < 1.0 for v in steps):
            raise ValueError(f"Expected `lr_steps` as fractions of training in (0, 1) (the paper's [0.625, 0.875]: "
                             f"epochs 5 and 7 of 8, whatever `epochs` is), but got {self.lr_steps!r}")
        if sorted(steps) != steps:
            raise ValueError(f"Expected `lr_steps` in increasing order, but got {self.lr_steps!r}")
        self.lr_steps = steps
        if self.patience < 0:
            raise ValueError(f"Expected `patience` >= 0, but got {self.patience!r}")
        if self.patience and not self.keep_best:
            raise ValueError(f"Expected `keep_best=true` with `patience` (early stopping watches the validation "
                             f"split), but got patience={self.patience} and keep_best=false")
        self._validate_methods()
        if self.frozen_stages is not None and self.frozen_stages < 0:
            raise ValueError(f"Expected `frozen_stages` >= 0 or null, but got {self.frozen_stages!r}")
        return self

    def _validate_methods(self) -> None:
        """The heads (ML-GCN, OLTR, BBN) and the second stage (their fields are read only when enabled)."""
        for name, valid in (("head", ("linear", "ml-gcn", "oltr", "bbn")),
                            ("sampler_epoch", ("data", "paper")), ("monitor", ("mAP", "micro_f1")),
                            ("health", ("stop", "warn", "off")), ("bias_init", ("default", "prior")),
                            ("decoupling", ("none", "crt", "lws", "tau-norm")),
                            ("stage2_sampler", ("random", "class-aware")),
                            ("bbn_sampler", ("reversed", "class-aware"))):
            if getattr(self, name) not in valid:
                raise ValueError(f"Expected `{name}` to be one of {valid}, but got {getattr(self, name)!r}")
        if not 0.0 <= self.gcn_tau <= 1.0:
            raise ValueError(f"Expected 0 <= `gcn_tau` <= 1, but got {self.gcn_tau!r}")
        if not 0.0 <= self.gcn_p < 1.0:
            raise ValueError(f"Expected 0 <= `gcn_p` < 1, but got {self.gcn_p!r}")
        if self.gcn_hidden < 1:
            raise ValueError(f"Expected `gcn_hidden` >= 1, but got {self.gcn_hidden!r}")
        if self.stage2_lr is not None and self.stage2_lr < 0:
            raise ValueError(f"Expected `stage2_lr` >= 0 or null, but got {self.stage2_lr!r}")
        if self.oltr_centroid_weight < 0:
            raise ValueError(f"Expected `oltr_centroid_weight` >= 0, but got {self.oltr_centroid_weight!r}")
        if self.decoupling != "none" and self.head in ("oltr", "bbn"):
            raise ValueError(f"Expected decoupling='none' with head={self.head!r} (decoupling re-trains a linear or "
                             f"ML-GCN classifier), but got decoupling={self.decoupling!r}")
        if self.head == "oltr" and self.stage2_epochs < 1:
            raise ValueError(f"Expected `stage2_epochs` >= 1 with head='oltr' (OLTR's stage 2 trains the modulated "
                             f"attention and the meta-embedding classifier), but got {self.stage2_epochs!r}")
        if self.decoupling in ("crt", "lws") and self.stage2_epochs < 1:
            raise ValueError(f"Expected `stage2_epochs` >= 1 with decoupling={self.decoupling!r} (its stage 2 "
                             f"trains the classifier), but got {self.stage2_epochs!r}")
        if self.decoupling in ("none", "tau-norm") and self.head != "oltr" and self.stage2_epochs != 0:
            raise ValueError(f"Expected `stage2_epochs` = 0 with decoupling={self.decoupling!r} (no stage 2 "
                             f"training), but got {self.stage2_epochs!r}")
        if self.decoupling in ("lws", "tau-norm") and self.head != "linear":
            raise ValueError(f"Expected head='linear' with decoupling={self.decoupling!r} (it rescales a linear "
                             f"classifier's rows), but got head={self.head!r}; decoupling=crt works with any head")
        if (self.decoupling != "none" or self.head == "oltr") and self.keep_best:
            what = f"decoupling={self.decoupling!r}" if self.decoupling != "none" else "head='oltr'"
            raise ValueError(f"Expected keep_best=false with {what} (the best epoch is chosen within one stage; not "
                             f"supported across two), but got keep_best=true")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved configuration as YAML, in field order (what ``save_config`` writes)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _val_size(value: Any) -> int | float:
    """``val_size`` checked: a count (int >= 0) or a fraction (float in (0, 1)); a float that is a
    whole number (YAML's ``1000.0``) is a count.

    >>> _val_size(0.1), _val_size(1000), _val_size(1000.0)
    (0.1, 1000, 1000)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Expected `val_size` to be a count (int >= 0) or a fraction in (0, 1), but got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value < 0 or (isinstance(value, float) and not 0.0 < value < 1.0):
        raise ValueError(f"Expected `val_size` to be a count (int >= 0) or a fraction in (0, 1), but got {value!r}")
    return value


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Convert ``value`` to the field's type where that is lossless (YAML reads ``1e-4`` as a string,
    ``2`` as an int for a float field); raise ``ValueError`` naming the field otherwise."""
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
    if typing.get_origin(base) is Literal and value in typing.get_args(base):
        return value
    if typing.get_origin(base) in (list, dict) and isinstance(value, typing.get_origin(base)):
        return value
    if base in (float, int, bool, str):
        raise ValueError(f"Expected `{name}` to be {base.__name__}, but got {value!r}")
    return value


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


#: The recipe key that names a base file (relative to the recipe); not a configuration field.
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


def _apply(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    top, _, sub = key.partition(".")
    if top not in _FIELDS:
        raise ValueError(f"{source}: unknown configuration key {top!r}; valid keys: {', '.join(_FIELDS)}")
    if sub:
        if top != "loss_args":
            raise ValueError(f"{source}: only `loss_args` takes dotted keys, but got {key!r}")
        data.setdefault(top, {})
        data[top] = {**data[top], sub: value}
    else:
        data[top] = value


def _upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration saved by an earlier version, in today's terms: ``lr_steps`` were absolute
    epochs (e.g. ``[5, 7]`` of 8) and become fractions of ``epochs``."""
    steps, epochs = data.get("lr_steps"), data.get("epochs", 8)
    if isinstance(steps, list) and steps and all(isinstance(v, (int, float)) and v >= 1 for v in steps):
        data = {**data, "lr_steps": [min(float(v) / epochs, 0.999) for v in steps]}
    return data


def load_config(recipe: str | Path | None = None, overrides: Sequence[str] = (), *,
                base: dict[str, Any] | None = None, **kwargs: Any) -> TrainConfig:
    """Resolve a recipe: ``base`` (e.g. a checkpoint's saved configuration), the YAML file (or
    shipped name) over its chain of ``base:`` files, then ``key=value`` overrides, then ``kwargs``.

    >>> cfg = load_config(None, ["epochs=2", "loss=bce"])
    >>> cfg.epochs, cfg.loss
    (2, 'bce')
    """
    data: dict[str, Any] = {}
    for k, v in _upgrade_saved(dict(base or {})).items():
        _apply(data, str(k), v, "saved configuration")
    if recipe is not None:
        for path, loaded in _recipe_chain(_resolve_recipe(recipe)):
            for k, v in loaded.items():
                _apply(data, str(k), v, str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"Override {item!r} is not of the form key=value")
        _apply(data, key.strip(), yaml.safe_load(raw), "override")
    for k, v in kwargs.items():
        _apply(data, k, v, "argument")
    try:
        cfg = TrainConfig(**data)
    except TypeError as e:
        raise ValueError(str(e)) from None
    return cfg.validate()


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved configuration as YAML (no ``base``: a saved file stands alone)."""
    Path(path).write_text(cfg.to_yaml())


#: Fields that only text datasets read: an image run is the same run whatever they say.
_TEXT_FIELDS = ("text_features", "tfidf_max_features")
_TEXT_DATASETS = ("reuters", "text-csv")


def saved_config_matches(cfg: TrainConfig, path: str | Path) -> bool:
    """Whether the configuration saved at ``path`` (a run's ``config.yaml``) describes the same run
    as ``cfg``: equal field by field, a field added since it was saved counting with its default,
    and text-feature fields ignored for an image dataset. False for a missing or unreadable file."""
    try:
        old = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(old, dict):
        return False
    new = yaml.safe_load(cfg.to_yaml())
    defaults = TrainConfig().to_dict()
    keys = set(old) | set(new)
    if cfg.dataset not in _TEXT_DATASETS:
        keys -= set(_TEXT_FIELDS)
    return all(old.get(k, defaults.get(k)) == new.get(k, defaults.get(k)) for k in keys)
