"""Tests of dbloss.config: recipes, their bases, overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dbloss.config import TrainConfig, list_recipes, load_config, recipe_dir, save_config, saved_config_matches
from dbloss.training.engine import get_lr, lr_step_epochs, schedule_warnings


def test_shipped_recipes_all_load():
    names = list_recipes()
    for ds in ("voc_mlt", "coco_mlt"):
        for row in ("erm", "rw", "focal", "rs", "cb_focal", "ldam", "r_bce_focal", "ntr_focal", "db_focal", "asl",
                    "ml_gcn", "crt", "oltr", "bbn"):
            assert f"{ds}/{row}" in names
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig)


#: The rows of the comparison (Wu et al., ECCV 2020, and ASL): each row is a loss and a sampler.
PAPER_ROWS = {"erm": ("bce", "random"), "rw": ("rw", "random"), "focal": ("focal", "random"),
              "rs": ("bce", "class-aware"), "cb_focal": ("cb-focal", "random"), "ldam": ("ldam", "random"),
              "r_bce_focal": ("r-focal", "class-aware"), "ntr_focal": ("ntr-focal", "class-aware"),
              "db_focal": ("db-focal", "class-aware"), "asl": ("asl", "random"),
              "ml_gcn": ("bce", "random"),  # ML-GCN (Chen et al.): the GCN head under BCE, uniform sampling
              "crt": ("bce", "random"),  # cRT (Kang et al.): stage 1's loss and sampler (stage 2: class-aware)
              "oltr": ("bce", "random"),  # OLTR (Liu et al.): stage 1's loss and sampler (stage 2: class-aware)
              "bbn": ("bce", "random")}  # BBN (Zhou et al.): the conventional branch's (the other: reversed)
#: What a row of each benchmark may set over its folder's ``_base.yaml`` (besides ``base`` itself).
ROW_KEYS = {"voc_mlt": {"name", "loss", "sampler", "loss_args"},
            "coco_mlt": {"name", "loss", "sampler", "loss_args"},
            "demo": {"name", "loss", "sampler", "lr"},  # lr: the DB family's, chosen on validation
            "demo_scratch": {"name", "loss", "sampler"},
            "demo_features": {"name", "loss", "sampler"},  # heads on frozen features: features/'s, tuned by dbloss tune
            "features": {"name", "loss", "sampler"},  # heads on anyone's features: dbloss tune chooses the rest
            "images": {"name", "loss", "sampler"},  # anyone's images, the paper's model and schedule
            "reuters": {"name", "loss", "loss_args"}}  # one sampler for every row: Huang et al.'s, in the base
#: What a method's row may set besides its folder's keys: the method's own switches, nothing else.
METHOD_KEYS = {"ml_gcn": {"head"}, "crt": {"decoupling", "stage2_epochs"},
               "oltr": {"head", "stage2_epochs", "num_samples_cls"}, "bbn": {"head"}}
#: The method rows' values of those keys (every benchmark's the same).
METHOD_VALUES = {"ml_gcn": {"head": "ml-gcn"}, "crt": {"decoupling": "crt", "stage2_epochs": 4},
                 "oltr": {"head": "oltr", "stage2_epochs": 4, "num_samples_cls": 4, "stage2_sampler": "class-aware"},
                 "bbn": {"head": "bbn", "bbn_sampler": "reversed"}}


def test_shipped_recipes_say_only_what_differs_from_their_base():
    """Every shipped recipe is its benchmark's ``_base`` plus its documented keys: the rows of one
    table share data, model, schedule and evaluation by construction, not by keeping copies equal."""
    assert {name.split("/")[0] for name in list_recipes()} == set(ROW_KEYS)
    for name in list_recipes():
        folder, row = name.split("/")
        own = yaml.safe_load((recipe_dir() / f"{name}.yaml").read_text())
        assert own.pop("base") == "_base.yaml", name
        allowed = ROW_KEYS[folder] | METHOD_KEYS.get(row, set())
        assert set(own) <= allowed, (name, set(own) - allowed)
        cfg, base = load_config(name).to_dict(), load_config(f"{folder}/_base").to_dict()
        assert {k for k in cfg if cfg[k] != base[k]} <= allowed, name
        assert {k: cfg[k] for k in METHOD_VALUES.get(row, {})} == METHOD_VALUES.get(row, {}), name
        assert cfg["name"] == row
        if folder != "reuters":
            assert (cfg["loss"], cfg["sampler"]) == PAPER_ROWS[row], name
    scratch, pretrained = load_config("demo_scratch/_base").to_dict(), load_config("demo/_base").to_dict()
    assert {k for k in scratch if scratch[k] != pretrained[k]} == {"weights"}  # the two demo settings
    for bench, dataset in (("voc_mlt", "voc"), ("coco_mlt", "coco")):
        base = load_config(f"{bench}/_base")
        assert (base.dataset, base.subset) == (dataset, f"data/published/{bench}_img_id.txt")
        assert {k for k, v in base.to_dict().items() if v != getattr(TrainConfig(), k)} == \
            {"dataset", "data_root", "subset", "sampler_epoch"}  # the paper's recipe is the TrainConfig default,
        assert base.sampler_epoch == "paper"  # but for the class-aware epoch's length, which the paper fixes


def test_bases_are_not_recipes():
    assert not [n for n in list_recipes() if Path(n).name.startswith("_")]
    assert sorted(p.parent.name for p in recipe_dir().glob("*/_base.yaml")) == sorted(ROW_KEYS)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_recipe_applies_over_its_base_and_overrides_apply_last(tmp_path):
    _write(tmp_path / "_base.yaml", "epochs: 3\nlr: 0.1\nloss: db-focal\nloss_args: {mu: 0.3, scale: 2.0}\n")
    row = _write(tmp_path / "row.yaml", "base: _base.yaml\nepochs: 5\nloss_args.mu: 0.2\n")
    cfg = load_config(row)
    assert (cfg.epochs, cfg.lr, cfg.loss) == (5, 0.1, "db-focal")
    assert cfg.loss_args == {"mu": 0.2, "scale": 2.0}  # a dotted key changes one argument and keeps the others
    replaced = _write(tmp_path / "replace.yaml", "base: _base.yaml\nloss_args: {neg_scale: 2.0}\n")
    assert load_config(replaced).loss_args == {"neg_scale": 2.0}  # a key replaces the base's value, as --set does
    cfg = load_config(row, ["epochs=7", "loss_args.scale=1.0"])
    assert cfg.epochs == 7 and cfg.loss_args == {"mu": 0.2, "scale": 1.0}


def test_bases_chain_relative_to_each_file(tmp_path):
    _write(tmp_path / "root.yaml", "epochs: 3\nlr: 0.1\nseed: 1\n")
    _write(tmp_path / "bench" / "_base.yaml", "base: ../root.yaml\nlr: 0.5\nsampler: random\n")
    row = _write(tmp_path / "bench" / "rows" / "rs.yaml", "base: ../_base.yaml\nsampler: class-aware\nseed: 2\n")
    cfg = load_config(row)
    assert (cfg.epochs, cfg.lr, cfg.sampler, cfg.seed) == (3, 0.5, "class-aware", 2)


def test_inheritance_errors_name_the_files(tmp_path):
    a = _write(tmp_path / "a.yaml", "base: b.yaml\nepochs: 2\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ValueError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(a)
    with pytest.raises(ValueError, match=r"cycle: .*self\.yaml -> .*self\.yaml"):
        load_config(_write(tmp_path / "self.yaml", "base: self.yaml\n"))
    orphan = _write(tmp_path / "orphan.yaml", "base: _missing_base.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"orphan\.yaml: base file '_missing_base\.yaml' not found"):
        load_config(orphan)
    _write(tmp_path / "typo_base.yaml", "epoch: 3\n")
    with pytest.raises(ValueError, match=r"typo_base\.yaml: unknown configuration key 'epoch'"):
        load_config(_write(tmp_path / "typo_row.yaml", "base: typo_base.yaml\n"))
    with pytest.raises(ValueError, match=r"list\.yaml: expected `base` to be a file name"):
        load_config(_write(tmp_path / "list.yaml", "base: [a.yaml]\n"))
    with pytest.raises(ValueError, match="unknown configuration key 'base'"):
        load_config("voc_mlt/rs", ["base=../coco_mlt/_base.yaml"])  # bases belong to files, not overrides


def test_saved_configuration_of_an_inherited_recipe_stands_alone(tmp_path):
    cfg = load_config("demo_scratch/db_focal", ["epochs=2"])
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "base" not in saved and saved["weights"] is None and saved["backbone"] == "small_cnn"
    assert load_config(tmp_path / "config.yaml") == cfg
    assert saved_config_matches(cfg, tmp_path / "config.yaml")
    assert not saved_config_matches(load_config("demo/db_focal", ["epochs=2"]), tmp_path / "config.yaml")


def test_db_focal_recipes_reproduce_original_release_settings():
    voc = load_config("voc_mlt/db_focal")
    assert voc.loss_args == {"init_bias": 0.01, "neg_scale": 5.0, "mu": 0.3, "scale": 2.0}
    coco = load_config("coco_mlt/db_focal")
    assert coco.loss_args == {"init_bias": 0.025, "neg_scale": 2.0, "mu": 0.2, "scale": 2.0}
    # the paper's optimisation recipe is the default
    assert (voc.lr, voc.batch_size, voc.epochs, voc.lr_steps, voc.grad_clip, voc.warmup_iters) == \
        (0.02, 32, 8, [0.625, 0.875], 35.0, 500)
    assert lr_step_epochs(voc) == [5, 7]  # the paper's decays after epochs 5 and 7 of 8


def test_overrides_and_dotted_loss_args(tmp_path):
    cfg = load_config("voc_mlt/db_focal", ["epochs=2", "loss_args.mu=0.25", "weights=null"])
    assert cfg.epochs == 2 and cfg.loss_args["mu"] == 0.25 and cfg.loss_args["neg_scale"] == 5.0
    assert cfg.weights is None
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown configuration key 'epoch'"):
        load_config(None, ["epoch=3"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ValueError, match="`sampler`"):
        load_config(None, ["sampler=balanced"])
    with pytest.raises(ValueError, match="`batch_size` >= 1"):
        load_config(None, ["batch_size=0"])
    with pytest.raises(FileNotFoundError, match="shipped recipes"):
        load_config("no/such_recipe")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"lossargs": {}}))
    with pytest.raises(ValueError, match="lossargs"):
        load_config(bad)


def test_lr_schedule_warmup_and_steps():
    cfg = TrainConfig(lr=0.02, warmup_iters=500, warmup_ratio=1 / 3, lr_gamma=0.1, epochs=8)
    assert get_lr(cfg, 0, 0) == pytest.approx(0.02 / 3)
    assert get_lr(cfg, 250, 0) == pytest.approx(0.02 * (1 - 0.5 * (2 / 3)))
    assert get_lr(cfg, 500, 0) == pytest.approx(0.02)
    assert get_lr(cfg, 10_000, 4) == pytest.approx(0.02)
    assert get_lr(cfg, 10_000, 5) == pytest.approx(0.002)
    assert get_lr(cfg, 10_000, 7) == pytest.approx(0.0002)


def test_lr_schedule_follows_epochs():
    """The step decays are fractions of training: 15 epochs keep the 8-epoch shape (5/8, 7/8)."""
    cfg = load_config("voc_mlt/rs", ["epochs=15"])
    assert lr_step_epochs(cfg) == [9, 13]
    lrs = [get_lr(cfg, 10_000, e) for e in range(15)]
    assert lrs[:9] == [pytest.approx(0.02)] * 9
    assert lrs[9:13] == [pytest.approx(0.002)] * 4 and lrs[13:] == [pytest.approx(0.0002)] * 2
    assert sum(lr == pytest.approx(0.0002) for lr in lrs) / 15 <= 1 / 8 + 0.01  # not 8 of 15 epochs at 1/100
    assert lr_step_epochs(load_config("voc_mlt/rs", ["epochs=4"])) == [3, 4]  # 2.5 rounds half up; 3.5 -> 4


def test_absolute_lr_steps_are_refused_and_saved_ones_upgraded():
    with pytest.raises(ValueError, match=r"fractions of training.*\[5, 7\]"):
        load_config(None, ["lr_steps=[5, 7]"])
    cfg = load_config(None, base={"epochs": 8, "lr_steps": [5, 7]})  # a checkpoint of an earlier version
    assert cfg.lr_steps == [0.625, 0.875] and lr_step_epochs(cfg) == [5, 7]


def test_schedule_warnings_name_the_setting():
    def warn(overrides, num_train=1000, iters=30, samples=960):
        return " | ".join(schedule_warnings(load_config("demo/rs", overrides), num_train, iters, samples))

    assert warn([]) == ""  # the shipped demo recipe is consistent
    assert "never happens" in warn(["epochs=1"])
    assert "warmup_iters=500 is longer than the run" in warn(["warmup_iters=500", "epochs=2"])
    assert "past the first lr step" in warn(["warmup_iters=200", "epochs=8"])
    assert "batch_size=64 is larger than the 40 training samples" in warn(["batch_size=64"], num_train=40)
    assert "sampler_reduce" in warn([], num_train=100, samples=5000)  # a class-aware epoch of 50x the data
    assert warn(["sampler=random"], num_train=100, samples=5000) == ""


def test_the_papers_recipes_warn_only_where_the_warm_up_outlasts_the_run(voc_coco_mlt_dir):
    """On the real VOC-MLT / COCO-MLT label counts the class-aware recipes are consistent (an epoch of
    3.4x / 11.8x the training set, the warm-up over before the first decay); with uniform sampling an
    epoch is 36 / 60 iterations and the paper's 500-iteration warm-up outlasts the whole run: said."""
    import numpy as np

    from dbloss.data.custom import read_csv

    for bench in ("voc_mlt", "coco_mlt"):
        labels = read_csv(voc_coco_mlt_dir / f"{bench}_train_labels.csv", path_column=None, id_column="image_id").labels
        n, c = labels.shape
        for row in ("rs", "db_focal", "erm", "focal"):
            cfg = load_config(f"{bench}/{row}")
            samples = int(labels.sum(0).max()) * c // cfg.sampler_reduce if cfg.sampler == "class-aware" else n
            found = schedule_warnings(cfg, n, int(np.ceil(samples / cfg.batch_size)), samples)
            if cfg.sampler == "class-aware":
                assert found == [], (bench, row)
            else:
                assert len(found) == 1 and "warmup_iters=500 is longer than the run" in found[0], (bench, row)
