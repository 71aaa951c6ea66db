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
