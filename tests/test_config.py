"""Tests of dbloss.config: recipes, overrides, validation."""

from __future__ import annotations

import pytest
import yaml

from dbloss.config import TrainConfig, list_recipes, load_config, save_config
from dbloss.engine import get_lr


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
        (0.02, 32, 8, [5, 7], 35.0, 500)


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
    cfg = TrainConfig(lr=0.02, warmup_iters=500, warmup_ratio=1 / 3, lr_steps=[5, 7], lr_gamma=0.1)
    assert get_lr(cfg, 0, 0) == pytest.approx(0.02 / 3)
    assert get_lr(cfg, 250, 0) == pytest.approx(0.02 * (1 - 0.5 * (2 / 3)))
    assert get_lr(cfg, 500, 0) == pytest.approx(0.02)
    assert get_lr(cfg, 10_000, 4) == pytest.approx(0.02)
    assert get_lr(cfg, 10_000, 5) == pytest.approx(0.002)
    assert get_lr(cfg, 10_000, 7) == pytest.approx(0.0002)
