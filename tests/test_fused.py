"""The fused CPU kernel of the DB loss family against the torch-ops path, and its edge cases.

The reference-equation, gradcheck and property tests of tests/test_losses.py run on both
backends (the ``db_backend`` fixture); these tests cover what only the kernel has.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dbloss.labels import label_masks
from dbloss.losses import build_loss, fused
from dbloss.losses.functional import BACKENDS, distribution_balanced_loss

pytestmark = pytest.mark.usefixtures("kernel")

DB_NAMES = ["db-focal", "r-bce", "r-focal", "ntr-focal"]


def _problem(b: int, c: int, dtype: torch.dtype, seed: int = 0, ignore: bool = True):
    g = torch.Generator().manual_seed(seed)
    freq = torch.randint(1, 400, (c,), generator=g)
    num_samples = int(freq.max()) * 3
    logits = (4 * torch.randn(b, c, generator=g)).to(dtype)
    targets = (torch.rand(b, c, generator=g) < 0.1).to(dtype)
    if b > 2:
        targets[0] = 0  # no positive label
        targets[1, :2] = 1
        if ignore:
            targets[2, : min(c, 5)] = -1
    return freq, num_samples, logits, targets


def _value_grad(loss_fn, logits, targets, grad_out=None):
    z = logits.detach().clone().requires_grad_(True)
    out = loss_fn(z, targets)
    out.backward(torch.ones_like(out) if grad_out is None else grad_out)
    return out.detach(), z.grad


@pytest.mark.parametrize("name", DB_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(7, 13), (300, 700)])  # (300, 700): several row blocks across threads
def test_kernel_matches_torch_path(name, dtype, reduction, shape):
    freq, n, logits, targets = _problem(*shape, dtype)
    fns = {b: build_loss(name, freq, n, reduction=reduction, backend=b).to(dtype) for b in ("torch", "kernel")}
    grad_out = torch.linspace(-1, 2, logits.numel(), dtype=dtype).reshape(shape) if reduction == "none" else None
    v_t, g_t = _value_grad(fns["torch"], logits, targets, grad_out)
    v_k, g_k = _value_grad(fns["kernel"], logits, targets, grad_out)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(v_k, v_t, **tol)
    torch.testing.assert_close(g_k, g_t, **tol)


def test_grad_out_scales_and_loss_is_deterministic_across_threads():
    freq, n, logits, targets = _problem(257, 301, torch.float32, seed=1)
    loss_fn = build_loss("db-focal", freq, n, backend="kernel")
    v1, g1 = _value_grad(loss_fn, logits, targets)
    v3, g3 = _value_grad(lambda z, t: 3.0 * loss_fn(z, t), logits, targets)
    torch.testing.assert_close(g3, 3 * g1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        v_one, g_one = _value_grad(loss_fn, logits, targets)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(v_one, v1) and torch.equal(g_one, g1)  # row sums are added in a fixed order


@pytest.mark.parametrize("targets_dtype", [torch.bool, torch.int64, torch.uint8, torch.float16])
def test_target_dtypes(targets_dtype):
    freq, n, logits, targets = _problem(9, 11, torch.float32, ignore=False)
    ref = build_loss("db-focal", freq, n, backend="torch")(logits, targets)
    out = build_loss("db-focal", freq, n, backend="kernel")(logits, targets.to(targets_dtype))
    torch.testing.assert_close(out, ref)


def test_non_contiguous_and_empty_inputs():
    freq, n, logits, targets = _problem(12, 10, torch.float32)
    loss_fn = build_loss("db-focal", freq, n, backend="kernel")
    lt, tt = logits.t().contiguous().t(), targets.t().contiguous().t()  # column-major views
    assert not lt.is_contiguous()
    torch.testing.assert_close(loss_fn(lt, tt), loss_fn(logits, targets))
    z = torch.zeros(0, 10, requires_grad=True)
    out = loss_fn(z, torch.zeros(0, 10))
    assert out.item() == 0.0
    out.backward()
    assert z.grad.shape == (0, 10)


@pytest.mark.parametrize("bad, shown", [(2.0, "2"), (0.5, "0.5"), (float("nan"), "nan")])
def test_bad_label_names_value_and_position(bad, shown):
    freq, n, logits, targets = _problem(6, 8, torch.float32, ignore=False)
    targets[4, 3] = bad
    for backend in ("kernel", "torch"):
        with pytest.raises(ValueError, match=r"values in \{0, 1, -1\}.*at \(row, class\) = \(4, 3\)") as info:
            build_loss("db-focal", freq, n, backend=backend)(logits, targets)
        assert shown in str(info.value)


@pytest.mark.parametrize("bad", [2.0, 0.5, float("nan"), float("inf"), -2.0, 255.0])
@pytest.mark.parametrize("ignore", [False, True])
def test_kernel_label_error_is_the_validators(bad, ignore):
    """The kernel checks labels in-kernel; its error is reported with dbloss.labels' message, as on every path."""
    freq, n, logits, targets = _problem(6, 8, torch.float32, ignore=ignore)
    targets[4, 3] = bad
    targets[5, 6] = bad  # a later bad entry: the first one is named
    with pytest.raises(ValueError) as expected:
        label_masks(targets, -1, name="targets")
    assert "(row, class) = (4, 3)" in str(expected.value)
    for backend in ("kernel", "torch", "reference"):
        with pytest.raises(ValueError) as info:
            build_loss("db-focal", freq, n, backend=backend)(logits, targets)
        assert str(info.value) == str(expected.value), backend
    # the in-kernel check is what caught it on the kernel path: the op itself raises, naming the entry
    with pytest.raises(ValueError, match=r"at \(row, class\) = \(4, 3\)"):
        fused.db_focal(logits.contiguous(), targets.contiguous(), 1.0 / freq.float(), None, alpha=0.1, beta=10.0,
                       mu=0.3, neg_scale=5.0, gamma=2.0, scale=1.0, rebalance=True, ignore_index=-1, reduction="mean")


def test_float64_targets_with_float32_logits_are_not_rounded():
    freq, n, logits, targets = _problem(5, 6, torch.float32, ignore=False)
    t = targets.double()
    t[1, 1] = 1 - 1e-12  # becomes 1.0 in float32: must still be refused
    with pytest.raises(ValueError, match="0.999999999999"):
        build_loss("db-focal", freq, n)(logits, t)  # auto: the torch path checks in float64
    with pytest.raises(ValueError, match="backend='kernel' needs"):
        build_loss("db-focal", freq, n, backend="kernel")(logits, t)


def test_backend_argument_is_checked():
    with pytest.raises(ValueError, match=str(BACKENDS).replace("(", r"\(").replace(")", r"\)")):
        build_loss("db-focal", [3, 4], 10, backend="cuda")
    with pytest.raises(ValueError, match="backend='kernel' needs CPU logits"):
        distribution_balanced_loss(torch.zeros(2, 2, device="meta"), torch.zeros(2, 2, device="meta"), [3, 4], 10,
                                   backend="kernel")


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_double_backward_raises_instead_of_returning_a_wrong_second_derivative(backend):
    freq, n, logits, targets = _problem(4, 5, torch.float64, ignore=False)
    z = logits.clone().requires_grad_(True)
    loss = build_loss("db-focal", freq, n, backend=backend)(z, targets)
    with pytest.raises(RuntimeError, match="double backward|differentiate twice|does not require grad"):
        (g,) = torch.autograd.grad(loss, z, create_graph=True)
        g.sum().backward()


def test_inputs_are_not_modified():
    freq, n, logits, targets = _problem(6, 8, torch.float32)
    l0, t0 = logits.clone(), targets.clone()
    z = logits.requires_grad_(True)
    build_loss("db-focal", freq, n, backend="kernel", reduction="none")(z, targets).sum().backward()
    assert torch.equal(logits.detach(), l0) and torch.equal(targets, t0)


def test_class_terms_cache_follows_buffer_changes():
    freq, n, logits, targets = _problem(6, 8, torch.float32, ignore=False)
    loss_fn = build_loss("db-focal", freq, n, backend="kernel")
    before = loss_fn(logits, targets)
    loss_fn.class_freq.mul_(2)  # in place: the cached 1/n_k and bias must be recomputed
    after = loss_fn(logits, targets)
    torch.testing.assert_close(after, build_loss("db-focal", freq * 2, n, backend="torch")(logits, targets))
    assert not torch.allclose(before, after)


def test_auto_falls_back_to_torch_with_a_warning_when_the_kernel_is_unavailable(tmp_path):
    code = (
        "import warnings, torch\n"
        "from dbloss.losses import build_loss\n"
        "z, y = torch.randn(4, 3), torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]])\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = build_loss('db-focal', [5, 3, 2], 9)(z, y)\n"
        "b = build_loss('db-focal', [5, 3, 2], 9, backend='torch')(z, y)\n"
        "assert torch.equal(a, b), (a, b)\n"
        "print([str(x.message) for x in w])\n"
    )
    env = {**os.environ, "DBLOSS_NO_KERNEL": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "DBLOSS_NO_KERNEL" in out.stdout and "pure-torch" in out.stdout


def test_cli_kernel_command_builds_and_checks(capsys):
    from dbloss.cli import main

    assert main(["kernel"]) == 0
    out = capsys.readouterr().out
    assert "fused DB kernel: built for" in out and "max |grad diff|" in out


def test_a_failed_build_falls_back_with_the_compiler_error(tmp_path):
    """No working C++ compiler (CXX=/bin/false, empty extension cache): a warning, then the torch path."""
    code = (
        "import warnings, torch\n"
        "from torch.utils import cpp_extension\n"
        "from dbloss.losses import build_loss, fused\n"
        "attempts, real_load = [], cpp_extension.load\n"
        "cpp_extension.load = lambda *a, **k: attempts.append(1) or real_load(*a, **k)\n"
        "z, y = torch.randn(4, 3), torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]])\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    a = build_loss('db-focal', [5, 3, 2], 9)(z, y)\n"
        "    for _ in range(3):\n"
        "        build_loss('db-focal', [5, 3, 2], 9)(z, y)\n"
        "assert torch.equal(a, build_loss('db-focal', [5, 3, 2], 9, backend='torch')(z, y))\n"
        "assert not fused.available()\n"
        "assert len(attempts) == 1, attempts  # the failed build is not retried at every call\n"
        "print([str(x.message)[:300] for x in w])\n"
        "try:\n"
        "    build_loss('db-focal', [5, 3, 2], 9, backend='kernel')(z, y)\n"
        "except fused.KernelBuildError as e:\n"
        "    print('KernelBuildError raised for backend=kernel')\n"
    )
    env = {**os.environ, "CXX": "/bin/false", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.pop("DBLOSS_NO_KERNEL", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "could not build the fused DB kernel" in out.stdout and "pure-torch" in out.stdout
    assert "KernelBuildError raised for backend=kernel" in out.stdout


def test_kernel_directory_follows_torch_extensions_dir(tmp_path, monkeypatch):
    from dbloss.losses import fused

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    build_dir = fused.kernel_directory()
    assert build_dir.is_dir() and tmp_path in build_dir.parents
    assert f"torch{torch.__version__}".replace("+", "_") in build_dir.parent.name
