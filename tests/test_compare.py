"""Tests of dbloss.apps.compare: reusing finished runs, rewriting a marked README block."""

from __future__ import annotations

import json

import pytest
import yaml

from dbloss.config import flat_view, load_config, save_config
from dbloss.apps.compare import _reusable, update_marked_block


def _finished(cfg, tmp_path, drop=()):
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    cfg.run.out_dir = str(out)
    save_config(cfg, out / "config.yaml")
    saved = yaml.safe_load((out / "config.yaml").read_text())
    for key in drop:  # "section.key"
        section, name = key.split(".")
        saved[section].pop(name)
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    (out / "metrics.json").write_text(json.dumps({"mAP": {"total": 0.5}}))
    return cfg


def test_finished_runs_are_reused_only_with_the_same_configuration(tmp_path):
    cfg = _finished(load_config("demo/rs"), tmp_path)
    assert _reusable(cfg) == {"mAP": {"total": 0.5}}
    other = load_config("demo/rs", ["optim.lr=0.05", f"run.out_dir={cfg.run.out_dir}"])
    assert _reusable(other) is None
    # a field added since the run was saved counts with its default; text settings do not touch image runs
    cfg = _finished(load_config("demo/rs"), tmp_path, drop=("eval.patience", "data.text_features"))
    assert _reusable(cfg) is not None
    assert _reusable(load_config("demo/rs", ["data.tfidf_max_features=5", f"run.out_dir={cfg.run.out_dir}"])) is not None
    assert _reusable(load_config("demo/rs", ["eval.patience=0", "eval.keep_best=false", f"run.out_dir={cfg.run.out_dir}"])) is not None
    flat = _finished(load_config("demo/rs"), tmp_path)  # a run folder saved before the sections: still reused
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(flat_view(flat)))
    assert _reusable(flat) is not None
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
        build_data(load_config("demo/rs", [f"data.root={tmp_path / 'data'}"]))
    assert not (tmp_path / "data").exists()


def test_reproduce_demo_end_to_end_with_a_tiny_configuration(tmp_path, capsys):
    """`dbloss reproduce demo`: rows x seeds, the report with the published column, time per row,
    the paper's increment figures; a second call reuses every run."""
    from dbloss.cli import main
    from dbloss.apps.compare import PUBLISHED, _published_table

    out = tmp_path / "repro"
    tiny = ["schedule.epochs=1", "model.weights=none", "optim.batch_size=64", "schedule.warmup_iters=1", "data.val_size=0", "sampler.reduce=32"]
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


def test_the_report_shows_the_results_tables_mean_and_sd_over_seeds(tmp_path):
    """write_comparison's report/report.{md,html} has results.md's rows: every seed's mean ± sd,
    not the first seed alone (fake finished runs, each seed with other metrics)."""
    import numpy as np

    from dbloss.apps.compare import write_comparison
    from dbloss.apps.report import seed_summary
    from dbloss.stats import class_split

    freq = [300, 120, 60, 25, 10, 4]
    split = {g: list(v) for g, v in class_split(np.array(freq)).items()}
    seeds = (0, 1, 2)
    rows = []
    for k, (row, loss, sampler) in enumerate((("erm", "bce", "random"), ("rs", "bce", "class-aware"),
                                             ("db_focal", "db-focal", "class-aware"))):
        runs = []
        for seed in seeds:
            ap = [min(1.0, 0.3 + 0.1 * k + 0.05 * c + 0.04 * seed * (k + 1)) for c in range(len(freq))]
            groups = {g: float(np.mean([ap[c] for c in split[g]])) for g in split if split[g]}
            m = {"name": row, "loss": loss, "sampler": sampler, "seed": seed, "per_class_ap": ap,
                 "mAP": {"total": float(np.mean(ap)), **groups}, "micro_f1": 0.5 + 0.03 * seed,
                 "macro_f1": 0.4 - 0.02 * seed * k, "class_names": [f"c{c}" for c in range(len(freq))],
                 "train_class_freq": freq, "split": split, "num_train": 100, "num_test": 50}
            (tmp_path / row / f"seed{seed}").mkdir(parents=True)
            (tmp_path / row / f"seed{seed}" / "metrics.json").write_text(json.dumps(m))
            runs.append(m)
        rows.append({**seed_summary(runs), "row": row, "runs": runs, "train_seconds": None})
    (tmp_path / "rs" / "seed7").mkdir()  # a seed of an older call beside them is not this comparison's
    (tmp_path / "rs" / "seed7" / "metrics.json").write_text(json.dumps({**rows[1]["runs"][0], "seed": 7,
                                                                        "mAP": {"total": 0.01}}))
    written = write_comparison(rows, tmp_path, seeds, title="Fake setting")
    table = written["table"]
    assert table in (tmp_path / "results.md").read_text()
    assert table in (tmp_path / "report" / "report.md").read_text()  # the same rows, cell for cell
    html = (tmp_path / "report" / "report.html").read_text()
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert "".join(f'<td class="num">{c}</td>' for c in cells[3:]) in html and " ± " in cells[3]
        first_seed = next(r for r in rows if r["name"] == cells[0])["runs"][0]
        assert cells[3] != f"{100 * first_seed['mAP']['total']:.2f}"
    assert "<h1>Fake setting</h1>" in html and "seed7" not in html
