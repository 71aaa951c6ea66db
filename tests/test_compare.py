"""Tests of dbloss.apps.compare: reusing finished runs, rewriting a marked README block."""

from __future__ import annotations

import json

import pytest
import yaml

from dbloss.config import load_config, save_config
from dbloss.apps.compare import _reusable, update_marked_block


def _finished(cfg, tmp_path, drop=()):
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    cfg.out_dir = str(out)
    save_config(cfg, out / "config.yaml")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for key in drop:
        saved.pop(key)
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    (out / "metrics.json").write_text(json.dumps({"mAP": {"total": 0.5}}))
    return cfg


def test_finished_runs_are_reused_only_with_the_same_configuration(tmp_path):
    cfg = _finished(load_config("demo/rs"), tmp_path)
    assert _reusable(cfg) == {"mAP": {"total": 0.5}}
    other = load_config("demo/rs", ["lr=0.05", f"out_dir={cfg.out_dir}"])
    assert _reusable(other) is None
    # a field added since the run was saved counts with its default; text settings do not touch image runs
    cfg = _finished(load_config("demo/rs"), tmp_path, drop=("patience", "text_features"))
    assert _reusable(cfg) is not None
    assert _reusable(load_config("demo/rs", ["tfidf_max_features=5", f"out_dir={cfg.out_dir}"])) is not None
    assert _reusable(load_config("demo/rs", ["patience=0", "keep_best=false", f"out_dir={cfg.out_dir}"])) is not None
    (tmp_path / "run" / "metrics.json").unlink()
    assert _reusable(cfg) is None


def test_update_marked_block(tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("a\n<!-- t -->\nold\n<!-- /t -->\nb\n")
    update_marked_block(doc, "t", "new $1 \\1 text")  # no regex expansion of the replacement
    assert doc.read_text() == "a\n<!-- t -->\nnew $1 \\1 text\n<!-- /t -->\nb\n"
    with pytest.raises(ValueError, match="no block <!-- u -->"):
        update_marked_block(doc, "u", "x")


def test_reading_demo_data_never_generates_it(tmp_path):
    from dbloss.data.synthetic import find_demo_dataset
    from dbloss.errors import UsageError
    from dbloss.data.pipeline import build_data

    with pytest.raises(UsageError, match=r"no complete demo dataset in .*`dbloss data make-demo "):
        find_demo_dataset(tmp_path / "data")
    with pytest.raises(UsageError, match="dbloss data make-demo"):
        build_data(load_config("demo/rs", [f"data_root={tmp_path / 'data'}"]))
    assert not (tmp_path / "data").exists()


def test_reproduce_demo_end_to_end_with_a_tiny_configuration(tmp_path, capsys):
    """`dbloss reproduce demo`: rows x seeds, the report with the published column, time per row,
    the paper's increment figures; a second call reuses every run."""
    from dbloss.cli import main
    from dbloss.apps.compare import PUBLISHED, _published_table

    out = tmp_path / "repro"
    tiny = ["epochs=1", "weights=none", "batch_size=64", "warmup_iters=1", "val_size=0", "sampler_reduce=32"]
    argv = ["reproduce", "demo", "--rows", "rs", "r_bce_focal", "db_focal", "--seeds", "0", "1", "--out", str(out),
            "--no-progress", "--set", *tiny]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["row"] for r in results["rows"]] == ["rs", "r_bce_focal", "db_focal"]
    for row in results["rows"]:
        assert row["seeds"] == [0, 1] and len(row["runs"]) == 2
        assert row["sd"]["total"] is not None and row["train_seconds"] > 0
        assert 0 < row["mean"]["total"] <= 1
    text = (out / "results.md").read_text()
    assert "| rs | – |" in text and "Training time" in text
    for fig in ("per_class_ap.png", "ap_increment.png", "ap_increment_r_bce_focal_over_rs.png",
                "ap_increment_db_focal_over_r_bce_focal.png"):
        assert (out / fig).stat().st_size > 1000
    assert (out / "report" / "report.html").is_file()
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reused") == 6
    # published values stand beside ours where known
    row = {**results["rows"][2], "row": "db_focal"}
    assert "| 78.94 / 73.22 / 84.18 / 79.30 [a] |" in _published_table([row], PUBLISHED["voc-mlt"])


def test_reproduce_rejects_unknown_rows_and_benchmarks(tmp_path):
    from dbloss.apps.compare import reproduce

    with pytest.raises(ValueError, match=r"Unknown voc-mlt row\(s\) \['gcn'\]; available: .*db_focal"):
        reproduce("voc-mlt", rows=["gcn"], out=tmp_path)  # a misspelt row
    with pytest.raises(ValueError, match="among"):
        reproduce("lvis", out=tmp_path)
