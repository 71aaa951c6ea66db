"""Tests of dbloss.config: recipes, their bases, overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dbloss.config import (TrainConfig, flat_view, list_recipes, load_config, recipe_dir, save_config,
                           saved_config_matches)
from dbloss.training.schedule import get_lr, lr_step_epochs, schedule_warnings


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
#: What a row of each benchmark may set over its folder's ``_base.yaml`` (besides ``base`` itself), as ``section.key``.
ROW = {"run.name", "loss.name", "sampler.name"}
ROW_KEYS = {"voc_mlt": ROW | {"loss.args"},
            "coco_mlt": ROW | {"loss.args"},
            "demo": ROW | {"optim.lr"},  # lr: the DB family's, chosen on validation
            "demo_scratch": ROW,
            "demo_features": ROW,  # heads on frozen features: features/'s, tuned by dbloss tune
            "features": ROW,  # heads on anyone's features: dbloss tune chooses the rest
            "images": ROW,  # anyone's images, the paper's model and schedule
            "reuters": {"run.name", "loss.name", "loss.args"}}  # one sampler for every row: Huang et al.'s, in the base
#: What a method's row may set besides its folder's keys: the method's own section, nothing else.
METHOD_KEYS = {"ml_gcn": {"method.name"}, "crt": {"method.name", "method.mode", "method.stage2_epochs"},
               "oltr": {"method.name", "method.stage2_epochs", "sampler.num_samples_cls"}, "bbn": {"method.name"}}
#: The method rows' values of those keys (every benchmark's the same).
METHOD_VALUES = {"ml_gcn": {"method.name": "ml-gcn"},
                 "crt": {"method.name": "decoupling", "method.mode": "crt", "method.stage2_epochs": 4},
                 "oltr": {"method.name": "oltr", "method.stage2_epochs": 4, "sampler.num_samples_cls": 4,
                          "method.stage2_sampler": "class-aware"},
                 "bbn": {"method.name": "bbn", "method.sampler": "reversed"}}


def _keys(sections: dict) -> dict:
    """A sectioned mapping as ``{"section.key": value}``."""
    return {f"{s}.{k}": v for s, keys in sections.items() for k, v in keys.items()}


def test_shipped_recipes_say_only_what_differs_from_their_base():
    """Every shipped recipe is its benchmark's ``_base`` plus its documented keys: the rows of one
    table share data, model, schedule and evaluation by construction, not by keeping copies equal."""
    assert {name.split("/")[0] for name in list_recipes()} == set(ROW_KEYS)
    for name in list_recipes():
        folder, row = name.split("/")
        own = yaml.safe_load((recipe_dir() / f"{name}.yaml").read_text())
        assert own.pop("base") == "_base.yaml", name
        own = _keys(own)
        allowed = ROW_KEYS[folder] | METHOD_KEYS.get(row, set())
        assert set(own) <= allowed, (name, set(own) - allowed)
        cfg, base = _keys(load_config(name).to_dict()), _keys(load_config(f"{folder}/_base").to_dict())
        changed = {k for k in cfg.keys() | base.keys() if cfg.get(k) != base.get(k)}
        assert changed <= allowed | {k for k in cfg if k.startswith("method.")}, name  # a method brings its options
        assert {k: cfg[k] for k in METHOD_VALUES.get(row, {})} == METHOD_VALUES.get(row, {}), name
        assert cfg["run.name"] == row
        if folder != "reuters":
            assert (cfg["loss.name"], cfg["sampler.name"]) == PAPER_ROWS[row], name
    scratch, pretrained = _keys(load_config("demo_scratch/_base").to_dict()), _keys(load_config("demo/_base").to_dict())
    assert {k for k in scratch if scratch[k] != pretrained[k]} == {"model.weights"}  # the two demo settings
    default = _keys(TrainConfig().to_dict())
    for bench, dataset in (("voc_mlt", "voc"), ("coco_mlt", "coco")):
        base = load_config(f"{bench}/_base")
        assert (base.data.dataset, base.data.subset) == (dataset, f"data/published/{bench}_img_id.txt")
        assert {k for k, v in _keys(base.to_dict()).items() if v != default[k]} == \
            {"data.dataset", "data.root", "data.subset", "sampler.epoch"}  # the paper's recipe is the default,
        assert base.sampler.epoch == "paper"  # but for the class-aware epoch's length, which the paper fixes


def test_shipped_recipes_resolve_as_before_the_sections():
    """The recipes moved to sections resolve to what they resolved to as flat files: the flat view of
    every shipped recipe equals the flat recipe of the same name, written as it was (converted on read)."""
    flat = {"epochs": 8, "lr": 0.02, "head": "ml-gcn", "gcn_hidden": 16, "decoupling": "crt", "stage2_epochs": 2,
            "loss": "bce", "loss_args": {"mu": 0.2}, "sampler": "random", "eval_batch_size": 7, "data_root": "d"}
    cfg = load_config(None, base=flat)
    assert flat_view(cfg) | flat == flat_view(cfg)
    assert (cfg.method.name, cfg.method.options.mode, cfg.method.options.classifier.name,
            cfg.method.options.classifier.options.hidden) == ("decoupling", "crt", "ml-gcn", 16)
    for name in list_recipes():
        again = load_config(None, base=flat_view(load_config(name)))  # the flat form, read back
        assert again == load_config(name), name


def test_bases_are_not_recipes():
    assert not [n for n in list_recipes() if Path(n).name.startswith("_")]
    assert sorted(p.parent.name for p in recipe_dir().glob("*/_base.yaml")) == sorted(ROW_KEYS)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_recipe_applies_over_its_base_and_overrides_apply_last(tmp_path):
    _write(tmp_path / "_base.yaml", "schedule: {epochs: 3}\noptim: {lr: 0.1, momentum: 0.5}\n"
                                    "loss: {name: db-focal, args: {mu: 0.3, scale: 2.0}}\n")
    row = _write(tmp_path / "row.yaml", "base: _base.yaml\nschedule: {epochs: 5}\nloss.args.mu: 0.2\n")
    cfg = load_config(row)
    assert (cfg.schedule.epochs, cfg.optim.lr, cfg.loss.name) == (5, 0.1, "db-focal")
    assert cfg.loss.args == {"mu": 0.2, "scale": 2.0}  # a dotted key changes one argument and keeps the others
    assert cfg.optim.momentum == 0.5  # a section changes the keys it names and keeps the base's others
    replaced = _write(tmp_path / "replace.yaml", "base: _base.yaml\nloss: {args: {neg_scale: 2.0}}\n")
    assert load_config(replaced).loss.args == {"neg_scale": 2.0}  # a key replaces the base's value, as --set does
    cfg = load_config(row, ["schedule.epochs=7", "loss.args.scale=1.0"])
    assert cfg.schedule.epochs == 7 and cfg.loss.args == {"mu": 0.2, "scale": 1.0}


def test_bases_chain_relative_to_each_file(tmp_path):
    _write(tmp_path / "root.yaml", "epochs: 3\nlr: 0.1\nseed: 1\n")
    _write(tmp_path / "bench" / "_base.yaml", "base: ../root.yaml\nlr: 0.5\nsampler: random\n")
    row = _write(tmp_path / "bench" / "rows" / "rs.yaml", "base: ../_base.yaml\nsampler: class-aware\nseed: 2\n")
    cfg = load_config(row)
    assert (cfg.schedule.epochs, cfg.optim.lr, cfg.sampler.name, cfg.run.seed) == (3, 0.5, "class-aware", 2)


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
    cfg = load_config("demo_scratch/db_focal", ["schedule.epochs=2"])
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "base" not in saved and saved["model"]["weights"] is None and saved["model"]["backbone"] == "small_cnn"
    assert load_config(tmp_path / "config.yaml") == cfg
    assert saved_config_matches(cfg, tmp_path / "config.yaml")
    assert not saved_config_matches(load_config("demo/db_focal", ["schedule.epochs=2"]), tmp_path / "config.yaml")


def test_db_focal_recipes_reproduce_original_release_settings():
    voc = load_config("voc_mlt/db_focal")
    assert voc.loss.args == {"init_bias": 0.01, "neg_scale": 5.0, "mu": 0.3, "scale": 2.0}
    coco = load_config("coco_mlt/db_focal")
    assert coco.loss.args == {"init_bias": 0.025, "neg_scale": 2.0, "mu": 0.2, "scale": 2.0}
    # the paper's optimisation recipe is the default
    assert (voc.optim.lr, voc.optim.batch_size, voc.schedule.epochs, voc.schedule.lr_steps, voc.optim.grad_clip, voc.schedule.warmup_iters) == \
        (0.02, 32, 8, [0.625, 0.875], 35.0, 500)
    assert lr_step_epochs(voc) == [5, 7]  # the paper's decays after epochs 5 and 7 of 8


def test_overrides_and_dotted_loss_args(tmp_path):
    cfg = load_config("voc_mlt/db_focal", ["schedule.epochs=2", "loss.args.mu=0.25", "model.weights=null"])
    assert cfg.schedule.epochs == 2 and cfg.loss.args["mu"] == 0.25 and cfg.loss.args["neg_scale"] == 5.0
    assert cfg.model.weights is None
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown configuration key 'epoch'"):
        load_config(None, ["epoch=3"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ValueError, match="`sampler.name`"):
        load_config(None, ["sampler.name=balanced"])
    with pytest.raises(ValueError, match="`optim.batch_size` >= 1"):
        load_config(None, ["optim.batch_size=0"])
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
    cfg = load_config(None, ["optim.lr=0.02", "schedule.warmup_iters=500", f"schedule.warmup_ratio={1 / 3}",
                             "schedule.lr_gamma=0.1", "schedule.epochs=8"])
    assert get_lr(cfg, 0, 0) == pytest.approx(0.02 / 3)
    assert get_lr(cfg, 250, 0) == pytest.approx(0.02 * (1 - 0.5 * (2 / 3)))
    assert get_lr(cfg, 500, 0) == pytest.approx(0.02)
    assert get_lr(cfg, 10_000, 4) == pytest.approx(0.02)
    assert get_lr(cfg, 10_000, 5) == pytest.approx(0.002)
    assert get_lr(cfg, 10_000, 7) == pytest.approx(0.0002)


def test_lr_schedule_follows_epochs():
    """The step decays are fractions of training: 15 epochs keep the 8-epoch shape (5/8, 7/8)."""
    cfg = load_config("voc_mlt/rs", ["schedule.epochs=15"])
    assert lr_step_epochs(cfg) == [9, 13]
    lrs = [get_lr(cfg, 10_000, e) for e in range(15)]
    assert lrs[:9] == [pytest.approx(0.02)] * 9
    assert lrs[9:13] == [pytest.approx(0.002)] * 4 and lrs[13:] == [pytest.approx(0.0002)] * 2
    assert sum(lr == pytest.approx(0.0002) for lr in lrs) / 15 <= 1 / 8 + 0.01  # not 8 of 15 epochs at 1/100
    assert lr_step_epochs(load_config("voc_mlt/rs", ["schedule.epochs=4"])) == [3, 4]  # 2.5 rounds half up; 3.5 -> 4


def test_absolute_lr_steps_are_refused_and_saved_ones_upgraded():
    with pytest.raises(ValueError, match=r"fractions of training.*\[5, 7\]"):
        load_config(None, ["schedule.lr_steps=[5, 7]"])
    cfg = load_config(None, base={"epochs": 8, "lr_steps": [5, 7]})  # a checkpoint of an earlier version
    assert cfg.schedule.lr_steps == [0.625, 0.875] and lr_step_epochs(cfg) == [5, 7]


def test_schedule_warnings_name_the_setting():
    def warn(overrides, num_train=1000, iters=30, samples=960):
        return " | ".join(schedule_warnings(load_config("demo/rs", overrides), num_train, iters, samples))

    assert warn([]) == ""  # the shipped demo recipe is consistent
    assert "never happens" in warn(["schedule.epochs=1"])
    assert "schedule.warmup_iters=500 is longer than the run" in warn(["schedule.warmup_iters=500", "schedule.epochs=2"])
    assert "past the first lr step" in warn(["schedule.warmup_iters=200", "schedule.epochs=8"])
    assert "optim.batch_size=64 is larger than the 40 training samples" in warn(["optim.batch_size=64"], num_train=40)
    assert "sampler.reduce" in warn([], num_train=100, samples=5000)  # a class-aware epoch of 50x the data
    assert warn(["sampler.name=random"], num_train=100, samples=5000) == ""


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
            samples = int(labels.sum(0).max()) * c // cfg.sampler.reduce if cfg.sampler.name == "class-aware" else n
            found = schedule_warnings(cfg, n, int(np.ceil(samples / cfg.optim.batch_size)), samples)
            if cfg.sampler.name == "class-aware":
                assert found == [], (bench, row)
            else:
                assert len(found) == 1 and "schedule.warmup_iters=500 is longer than the run" in found[0], (bench, row)


def test_flat_recipes_and_overrides_are_converted_with_a_note(tmp_path, caplog):
    """A recipe written before the sections (one flat mapping) still loads, each key in its section,
    and a note names the conversions; a flat override too."""
    old = _write(tmp_path / "old.yaml", "epochs: 3\nlr: 0.1\nloss: bce\nloss_args: {mu: 0.3}\nsampler: random\n"
                                        "head: bbn\nbbn_sampler: class-aware\neval_batch_size: 9\n")
    with caplog.at_level("WARNING", logger="dbloss.config"):
        cfg = load_config(old, ["weight_decay=0.5"])
    assert (cfg.schedule.epochs, cfg.optim.lr, cfg.loss.name, cfg.loss.args, cfg.sampler.name) == \
        (3, 0.1, "bce", {"mu": 0.3}, "random")
    assert (cfg.method.name, cfg.method.options.sampler, cfg.eval.batch_size, cfg.optim.weight_decay) == \
        ("bbn", "class-aware", 9, 0.5)
    mixed = load_config(None, ["gcn_hidden=16", "head=ml-gcn", "method.tau=0.3"])  # flat keys first, then a section's
    assert (mixed.method.name, mixed.method.options.hidden, mixed.method.options.tau) == ("ml-gcn", 16, 0.3)
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert "old.yaml: flat configuration keys converted to sections" in notes and "lr -> optim.lr" in notes
    assert "override: flat configuration keys converted" in notes and "weight_decay -> optim.weight_decay" in notes


def test_unknown_keys_name_the_section_and_the_closest_keys():
    with pytest.raises(ValueError, match=r"unknown configuration key 'lrr'; did you mean optim\.lr"):
        load_config(None, ["lrr=0.1"])
    with pytest.raises(ValueError, match=r"'optim.lrr' in section `optim`; did you mean optim\.lr.*; valid keys of "
                                         r"`optim`: name, lr, momentum"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ValueError, match=r"'method.hiden' in section `method`; did you mean method\.hidden.*valid keys "
                                         r"of `method`: name, label_embeddings, tau, p, hidden"):
        load_config(None, ["method.name=ml-gcn", "method.hiden=3"])
    with pytest.raises(ValueError, match=r"Expected `method.name` to be one of .*'bbn'.*but got 'bnn'; did you mean bbn"):
        load_config(None, ["method.name=bnn"])
    with pytest.raises(ValueError, match="expected section `optim` to be a mapping"):
        load_config(None, ["optim=0.1"])


def test_a_method_s_options_are_checked_in_its_section_and_reset_when_it_changes():
    cfg = load_config(None, ["method.name=ml-gcn", "method.hidden=16", "method.name=bbn"])
    assert cfg.method.name == "bbn" and cfg.method.options.sampler == "reversed"  # ml-gcn's options went with it
    assert load_config(None, ["method=bbn"]) == cfg  # a method's name alone: its defaults
    with pytest.raises(ValueError, match="method.hidden` >= 1"):
        load_config(None, ["method.name=ml-gcn", "method.hidden=0"])
    with pytest.raises(ValueError, match="method.stage2_epochs` = 0 with method.mode='tau-norm'"):
        load_config(None, ["method.name=decoupling", "method.mode=tau-norm"])
    cfg = load_config(None, ["method.name=decoupling", "method.classifier.name=ml-gcn", "method.classifier.hidden=8"])
    assert cfg.method.options.classifier.options.hidden == 8
    assert load_config(None, base=cfg.to_dict()) == cfg  # the saved form reads back
