"""Shared test fixtures.

Real data is read from ``../shared/data`` beside the repository (or ``$DBLOSS_SHARED_DATA``);
tests that need it are skipped with a reason when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DBLOSS_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set DBLOSS_SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture
def voc_coco_mlt_dir() -> Path:
    """``../shared/data/voc_coco_mlt`` (label matrices of VOC/COCO-MLT); skips when absent."""
    return _need("voc_coco_mlt")


@pytest.fixture
def reuters_dir() -> Path:
    """``../shared/data/reuters21578`` (the SGML files); skips when absent."""
    return _need("reuters21578")


def require_kernel() -> None:
    """Skip (or fail, when $DBLOSS_REQUIRE_KERNEL is set, as in CI) unless the fused DB kernel builds."""
    from dbloss.losses import fused

    try:
        fused.build(verbose=False)
    except fused.KernelBuildError as exc:
        message = f"the fused DB kernel is unavailable here: {str(exc)[:2000]}"
        if os.environ.get("DBLOSS_REQUIRE_KERNEL"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(params=["torch", "kernel"])
def db_backend(request: pytest.FixtureRequest) -> str:
    """Each DB-family backend in turn ("kernel" skipped where it cannot be built)."""
    if request.param == "kernel":
        require_kernel()
    return request.param


@pytest.fixture()
def kernel() -> None:
    """The fused DB kernel, built (or the test skipped; failed under $DBLOSS_REQUIRE_KERNEL)."""
    require_kernel()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in demo data (``dbloss.data.synthetic``), generated once per test session (~6 s)."""
    from dbloss.data.synthetic import generate_demo_dataset

    root = tmp_path_factory.getbasetemp() / "dbloss_demo_data"
    generate_demo_dataset(root, seed=0)
    return root


@pytest.fixture
def feature_recipe(tmp_path: Path):
    """``make(name, **settings) -> list[str]``: ``key=value`` overrides of a small head on synthetic
    long-tailed features (``data.synthetic.write_synthetic_features``: 300 training / 101 test
    samples, written once per test), CPU, no workers, out_dir ``tmp_path / name``."""
    import json

    from dbloss.data.synthetic import write_synthetic_features

    train_f, test_f = tmp_path / "train.npz", tmp_path / "test.npz"
    write_synthetic_features(train_f, 300, seed=0)
    write_synthetic_features(test_f, 101, seed=1)

    def make(name: str, **settings: object) -> list[str]:
        base = {"data.dataset": "features", "data.train_ann": str(train_f), "data.test_ann": str(test_f),
                "run.out_dir": str(tmp_path / name), "model.neck_dim": 16, "schedule.epochs": 2,
                "optim.batch_size": 32, "optim.lr": 0.05, "schedule.warmup_iters": 5, "schedule.lr_steps": [0.6],
                "data.workers": 0, "run.tensorboard": False, "run.device": "cpu", "loss.name": "bce",
                "sampler.name": "random"}
        # settings: section__key=value (or an old flat key, converted with a note)
        return [f"{k.replace('__', '.')}={json.dumps(v)}" for k, v in {**base, **settings}.items()]

    return make


class TrainingKilled(Exception):
    """Raised in place of an epoch by :func:`train_killed_after`."""


@pytest.fixture
def train_killed_after(monkeypatch: pytest.MonkeyPatch):
    """``train_killed_after(n, cfg)``: ``train(cfg)`` killed when its epoch n + 1 would start (after n
    epochs, all stages counted, are done and checkpointed), as an interrupted run is."""
    import dbloss.training.engine as engine

    def run(n: int, cfg: object) -> None:
        real, calls = engine.train_one_epoch, []

        def dies(*args: object, **kwargs: object) -> object:
            if len(calls) == n:
                raise TrainingKilled
            calls.append(1)
            return real(*args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(engine, "train_one_epoch", dies)
            with pytest.raises(TrainingKilled):
                engine.train(cfg, progress=False)

    return run


@pytest.fixture
def torch_path() -> object:
    """``torch_path(loss) -> dict``: the recipe settings (``loss.args.backend: torch``) that keep a DB-family
    loss on its torch path (the fused kernel is test_fused's); ``{}`` for a loss without backends."""
    from dbloss.losses import build_loss

    def settings(loss: str) -> dict[str, dict[str, str]]:
        try:
            build_loss(loss, [3, 2, 1], 4, backend="torch")
        except TypeError:
            return {}
        return {"loss__args": {"backend": "torch"}}

    return settings
