"""Tests of dbloss.config: recipes, overrides, validation."""

from __future__ import annotations

import pytest
import yaml

from dbloss.config import TrainConfig, list_recipes, load_config, save_config
from dbloss.engine import get_lr, lr_step_epochs, schedule_warnings


def test_shipped_recipes_all_load():
    names = list_recipes()
    for ds in ("voc_mlt", "coco_mlt"):
        for row in ("erm", "rw", "focal", "rs", "cb_focal", "ldam", "r_bce_focal", "ntr_focal", "db_focal", "asl"):
            assert f"{ds}/{row}" in names
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig)


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
