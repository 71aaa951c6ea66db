"""Tests of the ``dbloss`` command line (in-process through ``dbloss.cli.main``)."""

from __future__ import annotations

import json

import pytest

from dbloss.cli import main


def test_recipes_lists_shipped_recipes(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "voc_mlt/db_focal" in out and "coco_mlt/erm" in out and "demo/rs" in out


def test_data_stats_and_longtail_on_real_labels(voc_coco_mlt_dir, tmp_path, capsys):
    assert main(["data", "stats", str(voc_coco_mlt_dir / "voc_mlt_train_labels.csv"),
                 "--out", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "1142 samples, 20 classes" in out and "6 / 6 / 8" in out
    assert json.loads((tmp_path / "s.json").read_text())["class_freq"][14] == 775
    ids = tmp_path / "ids.txt"
    assert main(["data", "longtail", str(voc_coco_mlt_dir / "voc2012_trainval_labels.csv"), "--out", str(ids)]) == 0
    n = len(ids.read_text().split())
    assert 1000 < n < 1300


def test_analyze_commands_write_figures(voc_coco_mlt_dir, tmp_path):
    labels = str(voc_coco_mlt_dir / "voc_mlt_train_labels.csv")
    assert main(["analyze", "gradients", "--labels", labels, "--out", str(tmp_path / "g")]) == 0
    assert main(["analyze", "weights", "--labels", labels, "--out", str(tmp_path / "w")]) == 0
    assert any(p.suffix == ".png" for p in (tmp_path / "g").iterdir())
    assert any(p.suffix == ".json" for p in (tmp_path / "w").iterdir())


def test_errors_are_reported_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "no/such_recipe"]) == 2
    assert "shipped recipes" in capsys.readouterr().err
    assert main(["train", "voc_mlt/erm", "epoch=3"]) == 2
    assert "unknown configuration key 'epoch'" in capsys.readouterr().err
    assert main(["analyze", "weights", "--out", str(tmp_path)]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing_run"), "--out", str(tmp_path / "r")]) == 2
    assert "missing_run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no-such-command"])


def test_train_print_config_shows_the_resolved_recipe_and_trains_nothing(tmp_path, capsys, monkeypatch):
    import yaml

    from dbloss.config import load_config

    monkeypatch.chdir(tmp_path)
    args = ["demo_scratch/db_focal", "schedule.epochs=2", "loss.args.mu=0.2"]  # a recipe two bases deep, then overrides
    assert main(["train", *args, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config(args[0], [*args[1:], "run.out_dir=runs/demo_scratch_db_focal"]).to_dict()
    assert "base" not in printed and printed["model"]["weights"] is None and printed["loss"]["args"] == {"mu": 0.2}
    assert main(["train", "voc_mlt/rs", "--out", "elsewhere", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["run"]["out_dir"] == "elsewhere"
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written
    assert main(["recipes"]) == 0
    assert "_base" not in capsys.readouterr().out  # bases are not runnable recipes


def test_bugs_surface_as_tracebacks_and_bad_input_as_errors(monkeypatch, capsys):
    import dbloss.cli as cli
    from dbloss.errors import UsageError

    def raising(exc):
        def command(args):
            raise exc
        return command

    for exc in (TypeError("a bug"), KeyError("a bug"), AttributeError("a bug")):
        monkeypatch.setattr(cli, "_cmd_recipes", raising(exc))
        with pytest.raises(type(exc), match="a bug"):
            main(["recipes"])
    for exc in (UsageError("bad input"), ValueError("bad input"), FileNotFoundError("bad input")):
        monkeypatch.setattr(cli, "_cmd_recipes", raising(exc))
        assert main(["recipes"]) == 2
        assert "dbloss recipes: error: bad input" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["R", "--out", "elsewhere", "optim.lr=0.1", "schedule.epochs=2"],  # overrides after --out
    ["R", "optim.lr=0.1", "schedule.epochs=2", "--out", "elsewhere"],  # before it
    ["R", "optim.lr=0.1", "--out", "elsewhere", "schedule.epochs=2"],  # on both sides
    ["--out", "elsewhere", "R", "--print-config", "optim.lr=0.1", "schedule.epochs=2"],
])
def test_train_overrides_may_come_before_between_or_after_options(argv, capsys, monkeypatch):
    import dbloss.config

    seen = []

    class Resolved:  # what load_config returns, as far as `train --print-config` needs it
        def __getattr__(self, name):  # any section the command sets --out in
            return self

        def to_yaml(self):
            return "resolved\n"

    def load_config(recipe, overrides):  # the CLI hands the overrides on as strings, in their order
        seen.append((recipe, list(overrides)))
        return Resolved()

    monkeypatch.setattr(dbloss.config, "load_config", load_config)
    assert main(["train", *argv, "--print-config"]) == 0
    assert seen == [("R", ["optim.lr=0.1", "schedule.epochs=2"])] and capsys.readouterr().out == "resolved\n"


def test_every_sub_command_taking_overrides_or_inputs_parses_them_intermixed():
    from dbloss.cli import get_args_parser

    parser = get_args_parser()
    for command, first in (("train", "recipe"), ("tune", "recipe"), ("baseline", "recipe"),
                           ("evaluate", "checkpoint")):
        args = parser.parse_args([command, "R", "a=1", "--out", "D", "b=2", "--no-progress", "c=3"])
        assert (getattr(args, first), args.overrides, args.out, args.no_progress) == ("R", ["a=1", "b=2", "c=3"],
                                                                                   "D", True)
    args = parser.parse_args(["predict", "run", "a.jpg", "--out", "p.csv", "b.jpg", "--top-k", "2", "c.jpg"])
    assert (args.checkpoint, args.inputs, args.out, args.top_k) == ("run", ["a.jpg", "b.jpg", "c.jpg"], "p.csv", 2)
    args = parser.parse_args(["report", "r1", "--out", "o", "r2"])
    assert (args.runs, args.out) == (["r1", "r2"], "o")
    args = parser.parse_args(["data", "stats", "--out", "s.json", "labels.csv"])  # a sub-command's sub-command
    assert (args.data_cmd, args.labels, args.out) == ("stats", "labels.csv", "s.json")
    args = parser.parse_args(["demo", "--set", "a=1", "b=2", "--out", "x"])  # options taking lists are unchanged
    assert (args.set, args.out) == (["a=1", "b=2"], "x")


@pytest.mark.parametrize("argv", [
    ["train", "voc_mlt/erm", "--out", "d", "--no-such-option", "schedule.epochs=2"],
    ["train", "voc_mlt/erm", "schedule.epochs=2", "--no-such-option"],
    ["train", "--out", "d"],  # no recipe
    ["evaluate", "ckpt", "schedule.epochs=2"],  # --out is required
    ["data", "stats", "--out", "s.json"],  # no labels
])
def test_unknown_options_and_missing_arguments_still_exit_with_code_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and ("--no-such-option" in err if "--no-such-option" in argv else "required" in err)


def test_sub_command_help_still_works(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: dbloss train" in out and "overrides" in out and "--print-config" in out
