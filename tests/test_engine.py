"""End-to-end tests of dbloss.training.engine / the ``dbloss`` command on small feature data.

Feature inputs (a linear head on precomputed features) make these runs take seconds on a CPU
while going through the same loop as image training: sampler, loss, SGD schedule, checkpoints,
evaluation, distributed training with torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dbloss.config import load_config
from dbloss.training.engine import NonFiniteLossError, evaluate_checkpoint, train
from dbloss.data.synthetic import write_synthetic_features as make_features


@pytest.fixture
def feature_files(tmp_path: Path) -> tuple[Path, Path]:
    train_f, test_f = tmp_path / "train.npz", tmp_path / "test.npz"
    make_features(train_f, 600, seed=0)
    make_features(test_f, 101, seed=1)  # odd size: exercises distributed padding removal
    return train_f, test_f


def feature_overrides(train_f: Path, test_f: Path, out: Path, **extra: object) -> list[str]:
    """``section.key=value`` overrides of a small head on feature files; ``extra``: ``section__key=value``."""
    base = {"data.dataset": "features", "data.train_ann": str(train_f), "data.test_ann": str(test_f),
            "run.out_dir": str(out), "model.neck_dim": 0, "schedule.epochs": 3, "optim.batch_size": 32,
            "optim.lr": 0.05, "schedule.warmup_iters": 10, "schedule.lr_steps": [0.6], "data.workers": 0,
            "run.tensorboard": False, "run.device": "cpu", "loss.name": "db-focal", "sampler.name": "class-aware",
            "sampler.epoch": "paper"}  # the class-aware epoch these tests were written for
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={json.dumps(v)}" for k, v in base.items()]


def test_train_writes_run_directory_and_learns(feature_files, tmp_path):
    train_f, test_f = feature_files
    out = tmp_path / "run"
    res = train(load_config(None, feature_overrides(train_f, test_f, out)), progress=False)
    for f in ("config.yaml", "label_stats.json", "log.jsonl", "checkpoint.pt", "metrics.json", "metrics.md"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mAP"]["total"] == pytest.approx(res["mAP"]["total"])
    assert len(saved["per_class_ap"]) == 8 and saved["loss"] == "db-focal"
    assert set(saved["split"]) == {"head", "medium", "tail"}
    assert res["mAP"]["total"] > 0.6  # the classes are linearly separable-ish; chance is ~0.15
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3]
    assert any(r["type"] == "iter" and "lr" in r for r in records)


def test_same_seed_same_result_and_evaluate_command(feature_files, tmp_path):
    train_f, test_f = feature_files
    a = train(load_config(None, feature_overrides(train_f, test_f, tmp_path / "a")), progress=False)
    b = train(load_config(None, feature_overrides(train_f, test_f, tmp_path / "b")), progress=False)
    assert a["per_class_ap"] == b["per_class_ap"]
    ev = evaluate_checkpoint(tmp_path / "a" / "checkpoint.pt", tmp_path / "eval", progress=False)
    assert ev["per_class_ap"] == pytest.approx(a["per_class_ap"], abs=1e-12)
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_non_finite_loss_stops_with_iteration_and_checkpoint(feature_files, tmp_path):
    train_f, test_f = feature_files
    cfg = load_config(None, feature_overrides(train_f, test_f, tmp_path / "nan", optim__lr=1e30, optim__grad_clip=None,
                                              loss__name="bce", schedule__epochs=3))
    with pytest.raises(NonFiniteLossError, match=r"iteration \d+.*last good checkpoint"):
        train(cfg, progress=False)


def _run_cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "dbloss", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def write_recipe(path: Path, overrides: list[str]) -> Path:
    """A recipe file holding the given ``key=json`` overrides (JSON values are valid YAML)."""
    path.write_text("\n".join(o.replace("=", ": ", 1) for o in overrides) + "\n")
    return path


def test_killed_run_resumes_to_the_same_result(feature_files, tmp_path):
    train_f, test_f = feature_files
    make_features(train_f, 3000, seed=0)  # longer epochs so the run can be killed mid-way

    def recipe(out: Path) -> str:
        return str(write_recipe(tmp_path / f"{out.name}.yaml", feature_overrides(train_f, test_f, out, schedule__epochs=12)))

    full = tmp_path / "full"
    done = _run_cli(["train", recipe(full), "--no-progress"], tmp_path)
    out_full, _ = done.communicate(timeout=300)
    assert done.returncode == 0, out_full

    killed = tmp_path / "killed"
    p = _run_cli(["train", recipe(killed), "--no-progress"], tmp_path)
    log = killed / "log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        lines = log.read_text().splitlines() if log.is_file() else []
        if sum('"type": "epoch"' in x for x in lines) >= 3:
            break
        time.sleep(0.02)
    still_running = p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert still_running, "the run finished before it could be killed"
    assert not (killed / "metrics.json").exists()
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"] < 12

    resumed = _run_cli(["train", recipe(killed), "--no-progress", "--resume"], tmp_path)
    out_res, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out_res
    assert "resumed from" in out_res
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    assert b["per_class_ap"] == a["per_class_ap"]
    assert b["mAP"] == a["mAP"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{"sampler": "class-aware"}, {"sampler": "random"},
                                   {"sampler": "random", "head": "bbn"}],  # BBN: both of its samplers rank-aware
                         ids=["class-aware", "random", "bbn"])
def test_two_process_ddp_matches_single_process(tmp_path, extra):
    # 8 classes, largest class 64 -> class-aware epoch of 64 * 8 / 4 = 128 = 4 global batches of 32
    rng = np.random.default_rng(0)
    counts = [64, 40, 30, 20, 12, 8, 5, 3]
    n = 256
    labels = np.zeros((n, 8), dtype=np.int64)
    for k, c in enumerate(counts):
        labels[rng.choice(n, c, replace=False), k] = 1
    labels[labels.sum(1) == 0, 0] = 0
    directions = np.random.default_rng(1).normal(size=(8, 16))
    feats = (rng.normal(size=(n, 16)) + labels @ directions).astype(np.float32)
    np.savez(tmp_path / "train.npz", features=feats, labels=labels)
    test_lab = labels[:101]
    np.savez(tmp_path / "test.npz", features=feats[:101] + 0.1, labels=test_lab)
    single = tmp_path / "single"
    ref = train(load_config(None, feature_overrides(tmp_path / "train.npz", tmp_path / "test.npz", single, **extra)),
                progress=False)
    ddp = tmp_path / "ddp"
    recipe = write_recipe(tmp_path / "ddp.yaml",
                          feature_overrides(tmp_path / "train.npz", tmp_path / "test.npz", ddp, **extra))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dbloss",
           "train", str(recipe), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads((ddp / "metrics.json").read_text())
    assert got["num_test"] == 101
    np.testing.assert_allclose(got["per_class_ap"], ref["per_class_ap"], atol=2e-3)
    a = torch.load(single / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(ddp / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)


def test_bf16_autocast_training_on_cpu(feature_files, tmp_path):
    train_f, test_f = feature_files
    cfg = load_config(None, feature_overrides(train_f, test_f, tmp_path / "bf16", run__amp="bf16", model__neck_dim=16, schedule__epochs=2))
    res = train(cfg, progress=False)
    assert res["mAP"]["total"] > 0.4  # learns under bf16 autocast; the loss itself runs in float32


def test_fp16_autocast_with_grad_scaler_on_cpu(feature_files, tmp_path):
    """The fp16 path (GradScaler: scale, unscale before clipping, step, update) runs and learns."""
    train_f, test_f = feature_files
    cfg = load_config(None, feature_overrides(train_f, test_f, tmp_path / "fp16", run__amp="fp16", model__neck_dim=16, schedule__epochs=2))
    res = train(cfg, progress=False)
    assert res["mAP"]["total"] > 0.4
    assert "scaler" in torch.load(tmp_path / "fp16" / "checkpoint.pt", weights_only=True)


def test_compiled_model_matches_eager(feature_files, tmp_path):
    """run.compile=true (torch.compile of the model; the loss stays eager) trains to the eager result."""
    train_f, test_f = feature_files
    common = dict(model__neck_dim=16, schedule__epochs=1)
    eager = train(load_config(None, feature_overrides(train_f, test_f, tmp_path / "eager", **common)), progress=False)
    compiled = train(load_config(None, feature_overrides(train_f, test_f, tmp_path / "compiled", run__compile=True,
                                                         **common)), progress=False)
    assert compiled["mAP"]["total"] == pytest.approx(eager["mAP"]["total"], abs=0.02)


def test_adamw_option_trains_and_resume_refuses_a_different_optimizer(feature_files, tmp_path):
    train_f, test_f = feature_files
    out = tmp_path / "adamw"
    cfg = load_config(None, feature_overrides(train_f, test_f, out, optim__name="adamw", optim__lr=3e-3, optim__weight_decay=0.01,
                                              schedule__epochs=2))
    res = train(cfg, progress=False)
    assert res["mAP"]["total"] > 0.6
    state = torch.load(out / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    assert "exp_avg_sq" in next(iter(state.values()))  # Adam moments, not SGD momentum buffers
    sgd = load_config(None, feature_overrides(train_f, test_f, out, schedule__epochs=3))
    with pytest.raises(ValueError, match="optim.name='adamw'"):
        train(sgd, progress=False, resume=True)
    with pytest.raises(ValueError, match="`optim.name` to be one of"):
        load_config(None, feature_overrides(train_f, test_f, out, optim__name="adam"))


def test_validation_scores_are_recorded_at_the_selected_threshold(feature_files, tmp_path):
    train_f, test_f = feature_files
    out = tmp_path / "val"
    cfg = load_config(None, feature_overrides(train_f, test_f, out, data__val_size=120, eval__threshold_search=[0.3, 0.7, 0.05],
                                              schedule__epochs=2))
    res = train(cfg, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["val"]["threshold"] == res["threshold"]
    assert 0.3 <= res["threshold"] <= 0.7
    assert 0.0 < saved["val"]["micro_f1"] <= 1.0 and 0.0 <= saved["val"]["macro_f1"] <= 1.0
    assert saved["num_train"] == 600 - 120


def test_keep_best_tests_the_best_validated_epoch_and_resumes_it(feature_files, tmp_path):
    from dbloss.training.engine import evaluate_checkpoint

    train_f, test_f = feature_files
    common = dict(data__val_size=120, eval__threshold_search=[0.3, 0.7, 0.05], eval__keep_best=True, optim__lr=0.3, schedule__warmup_iters=0,
                  schedule__lr_steps=[])
    out = tmp_path / "best"
    res = train(load_config(None, feature_overrides(train_f, test_f, out, schedule__epochs=4, **common)), progress=False)
    vals = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    vals = [r for r in vals if r["type"] == "val"]
    assert [r["epoch"] for r in vals] == [1, 2, 3, 4]
    best = max(vals, key=lambda r: (r["micro_f1"], -r["epoch"]))  # the first of equal scores
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best_epoch"] == res["best_epoch"] == best["epoch"]
    assert saved["val"]["micro_f1"] == pytest.approx(best["micro_f1"])
    # the tested model is best.pt: evaluating that file gives the run's test metrics
    again = evaluate_checkpoint(out / "best.pt", tmp_path / "best_eval", progress=False)
    assert again["mAP"]["total"] == pytest.approx(res["mAP"]["total"], abs=1e-12)
    # stopping after epoch 2 and resuming to 4 carries the best-so-far over: same result
    part = tmp_path / "part"
    train(load_config(None, feature_overrides(train_f, test_f, part, schedule__epochs=2, **common)), progress=False)
    resumed = train(load_config(None, feature_overrides(train_f, test_f, part, schedule__epochs=4, **common)), progress=False,
                    resume=True)
    assert resumed["best_epoch"] == res["best_epoch"]
    assert resumed["mAP"]["total"] == pytest.approx(res["mAP"]["total"], abs=1e-12)
    with pytest.raises(ValueError, match="`data.val_size` > 0 with `eval.keep_best`"):
        load_config(None, feature_overrides(train_f, test_f, out, eval__keep_best=True))


def test_patience_stops_early_after_epochs_without_improvement(feature_files, tmp_path):
    train_f, test_f = feature_files
    # a constant, large lr: validation micro-F1 peaks early and then wanders
    common = dict(data__val_size=120, eval__keep_best=True, optim__lr=0.3, schedule__warmup_iters=0, schedule__lr_steps=[], schedule__epochs=12)
    full = tmp_path / "full"
    train(load_config(None, feature_overrides(train_f, test_f, full, **common)), progress=False)
    vals = [r for r in map(json.loads, (full / "log.jsonl").read_text().splitlines()) if r["type"] == "val"]
    f1 = [r["micro_f1"] for r in vals]
    # where patience 2 must stop: the first epoch two epochs after the running best
    best_epoch, stop = 0, None
    for e, v in enumerate(f1, start=1):
        if v > (f1[best_epoch - 1] if best_epoch else -1):
            best_epoch = e
        if e - best_epoch >= 2:
            stop = e
            break
    assert stop is not None and stop < 12  # this data does plateau: the early stop is exercised
    out = tmp_path / "early"
    res = train(load_config(None, feature_overrides(train_f, test_f, out, eval__patience=2, **common)), progress=False)
    logged = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())]
    epochs_run = [r["epoch"] for r in logged if r["type"] == "epoch"]
    assert epochs_run == list(range(1, stop + 1))
    assert res["best_epoch"] == best_epoch and res["epochs_run"] == stop
    assert [r["epoch"] for r in logged if r["type"] == "early_stop"] == [stop]
    with pytest.raises(ValueError, match="eval.keep_best=true` with `eval.patience`"):
        load_config(None, feature_overrides(train_f, test_f, out, eval__patience=2))


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(feature_files, tmp_path, capsys):
    from dbloss.cli import main
    from dbloss.errors import UsageError

    train_f, test_f = feature_files
    out = tmp_path / "run"
    overrides = feature_overrides(train_f, test_f, out, schedule__epochs=1)
    first = train(load_config(None, overrides), progress=False)
    saved = {f: (out / f).read_bytes() for f in ("metrics.json", "checkpoint.pt", "log.jsonl", "config.yaml")}
    with pytest.raises(UsageError, match=r"already holds a run \(checkpoint.pt, metrics.json\).*--resume.*--overwrite"):
        train(load_config(None, overrides), progress=False)
    recipe = str(write_recipe(tmp_path / "run.yaml", overrides))
    assert main(["train", recipe, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err and "--overwrite" in err
    assert {f: (out / f).read_bytes() for f in saved} == saved  # nothing of the finished run was touched
    assert main(["train", recipe, "--no-progress", "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    # --resume of a finished run: nothing left to train, the same test result
    assert main(["train", recipe, "--no-progress", "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["per_class_ap"] == first["per_class_ap"]
    # --overwrite: a fresh run in the same folder (its log is the new run's only)
    assert main(["train", recipe, "--no-progress", "--overwrite"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1]
    assert json.loads((out / "metrics.json").read_text())["per_class_ap"] == first["per_class_ap"]
    again = train(load_config(None, overrides), progress=False, overwrite=True)
    assert again["per_class_ap"] == first["per_class_ap"]


class _TouchOnUnpickle:
    """Unpickling this object creates ``marker``: a stand-in for a checkpoint that runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_and_weights_from_elsewhere_are_read_as_data(feature_files, tmp_path, capsys):
    from dbloss.cli import main
    from dbloss.errors import UsageError
    from dbloss.models.classifier import build_model

    train_f, test_f = feature_files
    out = tmp_path / "run"
    train(load_config(None, feature_overrides(train_f, test_f, out, schedule__epochs=1)), progress=False)
    good = torch.load(out / "checkpoint.pt", weights_only=True)  # what dbloss writes is plain data

    def evil_file(name: str, marker: Path, state: dict) -> Path:
        path = tmp_path / name
        torch.save({**state, "model": _TouchOnUnpickle(marker)}, path)
        return path

    proof = tmp_path / "proof"  # the payload works: an unsafe load does create its marker
    torch.load(evil_file("proof.pt", proof, good), weights_only=False)
    assert proof.is_file()

    marker = tmp_path / "marker"
    evil = evil_file("evil.pt", marker, good)
    assert main(["evaluate", str(evil), "--out", str(tmp_path / "eval"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "evil.pt: refused to load" in err and "weights_only=True" in err
    with pytest.raises(UsageError, match=r"evil\.pt: refused to load"):
        evaluate_checkpoint(evil, tmp_path / "eval", progress=False)
    resumed = load_config(None, feature_overrides(train_f, test_f, tmp_path / "resumed", schedule__epochs=2))
    with pytest.raises(UsageError, match=r"evil\.pt: refused to load"):
        train(resumed, progress=False, resume=str(evil))
    recipe = write_recipe(tmp_path / "resumed.yaml", feature_overrides(train_f, test_f, tmp_path / "resumed", schedule__epochs=2))
    assert main(["train", str(recipe), "--no-progress", "--resume", str(evil)]) == 2
    assert "evil.pt: refused to load" in capsys.readouterr().err
    weights = evil_file("evil.pth", marker, {})
    with pytest.raises(UsageError, match=r"evil\.pth: refused to load"):
        build_model(3, backbone="small_cnn", weights=str(weights))
    assert not marker.exists()
    assert not (tmp_path / "resumed" / "config.yaml").exists()  # a refused resume writes nothing
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")  # plain data, but not a dbloss checkpoint
    with pytest.raises(UsageError, match=r"other\.pt: not a dbloss checkpoint \(no model, config, label_stats\)"):
        evaluate_checkpoint(tmp_path / "other.pt", tmp_path / "eval", progress=False)
    with pytest.raises(UsageError, match=r"other\.pt: not a dbloss checkpoint"):
        train(resumed, progress=False, resume=str(tmp_path / "other.pt"))


def test_a_loss_argument_the_loss_does_not_take_is_a_usage_error(feature_files, tmp_path):
    from dbloss.errors import UsageError

    train_f, test_f = feature_files
    cfg = load_config(None, feature_overrides(train_f, test_f, tmp_path / "run", **{"loss__args": {"lambda_": 1.0}}))
    with pytest.raises(UsageError, match=r"loss_args: Loss 'db-focal' got unexpected argument\(s\) \['lambda_'\]"):
        train(cfg, progress=False)


def test_per_class_thresholds_are_chosen_on_validation_reported_and_stored(feature_files, tmp_path):
    from dbloss.files import load_checkpoint
    from dbloss.metrics import f1_scores

    train_f, test_f = feature_files
    out = tmp_path / "thr"
    res = train(load_config(None, feature_overrides(train_f, test_f, out, data__val_size=200, eval__min_val_positives=5,
                                                    eval__threshold_search=[0.1, 0.9, 0.1])), progress=False)
    pc = res["per_class_thresholds"]
    assert len(pc["thresholds"]) == 8 and set(pc["macro_f1_groups"]) == {"head", "medium", "tail"}
    assert any(t != res["threshold"] for t in pc["thresholds"])  # (the fallback rule: tests/test_thresholds.py)
    # the reported F1 is the F1 of the test predictions at those thresholds
    pred = np.load(out / "predictions.npz")
    again = f1_scores(pred["scores"], pred["targets"], threshold=pc["thresholds"])
    assert pc["micro_f1"] == pytest.approx(again["micro_f1"])
    # the global-threshold F1 stays where it was
    assert res["micro_f1"] == pytest.approx(f1_scores(pred["scores"], pred["targets"], res["threshold"])["micro_f1"])
    stored = load_checkpoint(out / "checkpoint.pt")["thresholds"]
    assert stored == {"global": res["threshold"], "per_class": pc["thresholds"]}


def test_the_class_aware_epoch_is_as_long_as_the_training_split_unless_the_recipe_keeps_the_papers(feature_files,
                                                                                                  tmp_path):
    train_f, test_f = feature_files
    iterations = {}
    for epoch_kind in ("data", "paper"):
        out = tmp_path / epoch_kind
        train(load_config(None, feature_overrides(train_f, test_f, out, schedule__epochs=1, sampler__epoch=epoch_kind)),
              progress=False)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        iterations[epoch_kind] = next(r["iterations"] for r in log if r.get("type") == "epoch")
    labels = np.load(train_f)["labels"]
    assert iterations["data"] == -(-len(labels) // 32)  # 600 samples, batches of 32
    assert iterations["paper"] == -(-int(labels.sum(0).max() * labels.shape[1] / 4) // 32)
    for bench in ("voc_mlt", "coco_mlt", "demo", "demo_scratch"):  # the paper's epoch, as published
        assert load_config(f"{bench}/_base").sampler.epoch == "paper"
    assert load_config("features/rs").sampler.epoch == "data"


def test_bias_init_prior_starts_every_logit_at_its_class_prior(feature_files, tmp_path):
    from dbloss.training.engine import build_network
    from dbloss.stats import LabelStats

    train_f, _ = feature_files
    labels = np.load(train_f)["labels"]
    stats = LabelStats.from_labels(labels)
    cfg = load_config(None, ["model.bias_init=prior", "model.neck_dim=0"])
    torch.manual_seed(0)
    model = build_network(cfg, labels.shape[1], torch.device("cpu"), input_type="features", in_features=16,
                          stats=stats)
    prior = torch.as_tensor(labels.mean(0), dtype=torch.float32)
    torch.testing.assert_close(torch.sigmoid(model.classifier.bias.detach()), prior)
    torch.manual_seed(0)
    plain = build_network(load_config(None, ["model.neck_dim=0"]), labels.shape[1], torch.device("cpu"),
                          input_type="features", in_features=16, stats=stats)
    assert torch.equal(plain.classifier.weight, model.classifier.weight)  # the weights drew the same numbers
    with pytest.raises(ValueError, match="model.bias_init=prior sets a linear classifier's bias, but method 'ml-gcn'"):
        build_network(load_config(None, ["model.bias_init=prior", "method.name=ml-gcn"]), labels.shape[1], torch.device("cpu"),
                      input_type="features", in_features=16, stats=stats)
    assert load_config("features/db_focal").model.bias_init == "prior" and load_config("voc_mlt/db_focal").model.bias_init == \
        "default"


def test_a_run_folder_saved_before_the_sections_still_loads_evaluates_predicts_and_resumes(feature_files, tmp_path):
    """An old run folder (flat ``config.yaml`` and checkpoint ``config``) is read with its keys converted:
    evaluated, rebuilt for prediction and resumed, to the same model and numbers."""
    import yaml

    from dbloss.apps.predict import Predictor
    from dbloss.config import flat_view
    from dbloss.files import load_checkpoint, save_checkpoint

    train_f, test_f = feature_files
    out = tmp_path / "old"
    cfg = load_config(None, feature_overrides(train_f, test_f, out, schedule__epochs=2))
    res = train(cfg, progress=False)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    flat = flat_view(cfg)
    assert "epochs" in flat and "optim" not in flat
    save_checkpoint(out / "checkpoint.pt", {**ckpt, "config": flat})  # as an earlier version wrote it
    (out / "config.yaml").write_text(yaml.safe_dump(flat))
    again = evaluate_checkpoint(out / "checkpoint.pt", tmp_path / "eval", progress=False)
    assert again["mAP"] == res["mAP"]
    predictor = Predictor.from_checkpoint(out, device="cpu")
    assert predictor.config == cfg
    longer = load_config(None, feature_overrides(train_f, test_f, out, schedule__epochs=3))
    resumed = train(longer, resume=True, progress=False)
    assert resumed["epochs"] == 3 and load_checkpoint(out / "checkpoint.pt")["epoch"] == 3
