"""Tests of dbloss.losses: reference implementations, properties, dtypes, validation."""

from __future__ import annotations

import dataclasses
import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from dbloss.labels import label_masks
from dbloss.losses import LOSS_NAMES, DBParams, DistributionBalancedLoss, build_loss
from dbloss.losses import _common, baselines, factory, fast, functional, modules, reference
from dbloss.losses.baselines import (
    asymmetric_loss,
    class_balanced_weight,
    inverse_frequency_weight,
    ldam_margin,
    sigmoid_focal_loss,
)
from dbloss.losses.reference import (
    distribution_balanced_loss,
    negative_tolerant_bias,
    rebalance_map,
    rebalance_ratio,
    rebalance_weight,
)

CLASS_FREQ = [40, 17, 9, 3, 1]
NUM_SAMPLES = 50


def _data(seed: int = 0, b: int = 6, c: int = 5, dtype: torch.dtype = torch.float32, ignore: bool = False):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, c, generator=g)).to(dtype)
    targets = (torch.rand(b, c, generator=g) < 0.4).long()
    targets[0] = torch.tensor([1, 0, 1, 0, 1])[:c]
    targets[1] = 0  # a sample with no positive label
    if ignore:
        targets[2, 1] = -1
        targets[3, 4] = -1
    return logits, targets


# --------------------------------------------------------------------------------------------
# independent reference implementations (written from the equations, not from our code)
# --------------------------------------------------------------------------------------------
def _paper_db_loss(logits, targets, class_freq, n_total, *, alpha=0.1, beta=10.0, mu=0.3, neg_scale=5.0,
                   init_bias=0.05, gamma=2.0, scale=1.0, ignore_index=-1):
    """Per-element loop over the paper's equations, in Python floats; returns a (B, C) list and the mean."""
    z_all, t_all = logits.tolist(), targets.tolist()
    out, total, count = [], 0.0, 0
    for i, (zs, ts) in enumerate(zip(z_all, t_all)):
        denom = sum(1.0 / class_freq[j] for j, t in enumerate(ts) if t == 1)
        row = []
        for k, (z, t) in enumerate(zip(zs, ts)):
            if t == ignore_index:
                row.append(0.0)
                continue
            r = (1.0 / class_freq[k]) / denom if denom > 0 else math.inf
            r_hat = alpha + 1.0 / (1.0 + math.exp(-beta * (r - mu))) if r != math.inf else alpha + 1.0
            nu = init_bias * -math.log(n_total / class_freq[k] - 1.0)
            if t == 1:
                zp, w = z + nu, 1.0
                s = zp  # p_t = sigmoid(s); written with the signed logit to avoid 1 - (1 - tiny)
            else:
                zp, w = neg_scale * (z + nu), 1.0 / neg_scale
                s = -zp
            one_minus_pt = 1.0 / (1.0 + math.exp(s))
            bce = math.log1p(math.exp(-s))  # -log(p_t)
            loss = scale * r_hat * w * one_minus_pt ** gamma * bce
            row.append(loss)
            total, count = total + loss, count + 1
        out.append(row)
    return out, total / count


def _original_release_loss(logits, labels, class_freq, neg_class_freq, *, map_param, logit_reg, focal, loss_weight=1.0):
    """The original ResampleLoss (reweight_func='rebalance', focal) step by step, then the trainer's mean."""
    class_freq = torch.as_tensor(class_freq, dtype=torch.float64)
    neg_class_freq = torch.as_tensor(neg_class_freq, dtype=torch.float64)
    labels = labels.double()
    train_num = class_freq[0] + neg_class_freq[0]
    # reweight_functions -> rebalance_weight
    freq_inv = 1.0 / class_freq
    repeat_rate = torch.sum(labels * freq_inv, dim=1, keepdim=True)
    pos_weight = freq_inv.unsqueeze(0) / repeat_rate
    weight = torch.sigmoid(map_param["beta"] * (pos_weight - map_param["gamma"])) + map_param["alpha"]
    # logit_reg_functions: the bias divided by neg_scale, added (in place there; a copy here)
    neg_scale = logit_reg["neg_scale"]
    init_bias = -torch.log(train_num / class_freq - 1) * logit_reg["init_bias"] / neg_scale
    logits = logits + init_bias
    logits = logits * (1 - labels) * neg_scale + logits * labels
    weight = weight / neg_scale * (1 - labels) + weight * labels
    # focal branch: pt from the unweighted BCE, weight inside the BCE, balance_param outside
    logpt = -F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    pt = torch.exp(logpt)
    loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weight, reduction="none")
    loss = ((1 - pt) ** focal["gamma"]) * loss * focal["balance_param"]
    loss = loss_weight * loss
    return loss  # (B, C); the trainer's parse_losses takes loss.mean()


# --------------------------------------------------------------------------------------------
# DB loss against the references
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("hp", [
    {},
    {"mu": 0.2, "neg_scale": 2.0, "init_bias": 0.025, "scale": 2.0},
    {"gamma": 0.0, "alpha": 0.5, "beta": 3.0},
    {"gamma": 1.5, "neg_scale": 1.0, "init_bias": 0.0},
])
def test_db_matches_paper_equations(seed, hp, db_backend):
    logits, targets = _data(seed, ignore=True)
    logits = logits.double()
    ref, ref_mean = _paper_db_loss(logits, targets, CLASS_FREQ, NUM_SAMPLES, **hp)
    out = distribution_balanced_loss(logits, targets, CLASS_FREQ, NUM_SAMPLES, reduction="none", backend=db_backend,
                                     **hp)
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    mod = DistributionBalancedLoss(torch.tensor(CLASS_FREQ), NUM_SAMPLES, backend=db_backend, **hp)
    assert mod(logits, targets).item() == pytest.approx(ref_mean, rel=1e-9)
    # float32 agrees too
    assert mod(logits.float(), targets).item() == pytest.approx(ref_mean, rel=1e-5)


@pytest.mark.parametrize("dataset, ours, original", [
    ("voc", dict(init_bias=0.01, neg_scale=5.0, mu=0.3, scale=2.0),
     dict(logit_reg=dict(init_bias=0.05, neg_scale=5.0), map_param=dict(alpha=0.1, beta=10.0, gamma=0.3))),
    ("coco", dict(init_bias=0.025, neg_scale=2.0, mu=0.2, scale=2.0),
     dict(logit_reg=dict(init_bias=0.05, neg_scale=2.0), map_param=dict(alpha=0.1, beta=10.0, gamma=0.2))),
])
def test_reproduces_original_release(dataset, ours, original, db_backend):
    logits, targets = _data(3, b=8)  # row 1 has no positive label: both give weight alpha + 1
    neg_freq = [NUM_SAMPLES - n for n in CLASS_FREQ]
    ref = _original_release_loss(logits.double(), targets, CLASS_FREQ, neg_freq,
                                 focal=dict(gamma=2, balance_param=2.0), **original)
    loss_fn = build_loss("db-focal", torch.tensor(CLASS_FREQ), NUM_SAMPLES, backend=db_backend, **ours)
    torch.testing.assert_close(loss_fn.double()(logits.double(), targets), ref.mean(), rtol=1e-10, atol=0)
    out = build_loss("db-focal", CLASS_FREQ, NUM_SAMPLES, reduction="none", backend=db_backend, **ours)(logits,
                                                                                                       targets)
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-6)
    # the paper's bias (no division by neg_scale) differs from the original's
    paper = build_loss("db-focal", CLASS_FREQ, NUM_SAMPLES, init_bias=0.05, **{k: v for k, v in ours.items()
                                                                                if k != "init_bias"})
    assert not torch.allclose(paper(logits, targets), ref.float().mean())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("hp", [
    {},
    {"mu": 0.2, "neg_scale": 2.0, "init_bias": 0.025, "scale": 2.0},
    {"gamma": 0.0, "alpha": 0.5, "beta": 3.0},
    {"gamma": 1.5, "neg_scale": 1.0, "init_bias": 0.0},
    {"rebalance": False},
])
def test_reference_matches_paper_equations(seed, hp):
    logits, targets = _data(seed, ignore=True)
    logits = logits.double()
    ref, ref_mean = _paper_db_loss(logits, targets, CLASS_FREQ, NUM_SAMPLES,
                                   **{k: v for k, v in hp.items() if k != "rebalance"})
    if hp.get("rebalance") is False:  # r_hat = 1: divide the paper loop's weight out again
        ref = (torch.tensor(ref, dtype=torch.float64) / rebalance_weight(targets, torch.tensor(
            CLASS_FREQ, dtype=torch.float64))).tolist()
        ref_mean = torch.tensor(ref, dtype=torch.float64).sum().item() / int((targets != -1).sum())
    out = distribution_balanced_loss(logits, targets, CLASS_FREQ, NUM_SAMPLES, reduction="none",
                                     backend="reference", **hp)
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    mod = DistributionBalancedLoss(torch.tensor(CLASS_FREQ), NUM_SAMPLES, backend="reference", **hp)
    assert mod(logits, targets).item() == pytest.approx(ref_mean, rel=1e-9)


# --------------------------------------------------------------------------------------------
# the fast paths (losses/fast.py) against the reference (losses/reference.py)
# --------------------------------------------------------------------------------------------
_SWITCHES = {  # each of re-balancing, NTR and the focal term on and off
    f"rebalance={rb},ntr={ntr},gamma={g}": {"rebalance": rb, "gamma": g,
                                            **({} if ntr else {"neg_scale": 1.0, "init_bias": 0.0})}
    for rb in (True, False) for ntr in (True, False) for g in (0.0, 2.0, 1.5)
}
_SWITCHES["beta=0,scale=2,kappa=0.5"] = {"beta": 0.0, "scale": 2.0, "init_bias": 0.5, "neg_scale": 3.0}


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("hp", list(_SWITCHES.values()), ids=list(_SWITCHES))
def test_fast_paths_match_the_reference(hp, reduction, db_backend):
    logits, targets = _data(20, b=9, ignore=True)  # ignored entries; row 1 has no positive label
    targets[5] = -1  # a row with ignored entries only
    targets[6] = torch.tensor([0, -1, 0, 0, -1])  # no positive, some ignored
    logits = logits.double()
    grad_out = (torch.linspace(-1, 2, logits.numel(), dtype=torch.float64).reshape(logits.shape)
                if reduction == "none" else None)

    def value_and_grad(backend):
        z = logits.clone().requires_grad_(True)
        out = distribution_balanced_loss(z, targets, CLASS_FREQ, NUM_SAMPLES, reduction=reduction,
                                         backend=backend, **hp)
        out.backward(torch.ones_like(out) if grad_out is None else grad_out)
        return out.detach(), z.grad

    v_ref, g_ref = value_and_grad("reference")
    v_fast, g_fast = value_and_grad(db_backend)
    torch.testing.assert_close(v_fast, v_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-12)
    # and in float32, through the module (cached class terms)
    mod = {b: DistributionBalancedLoss(CLASS_FREQ, NUM_SAMPLES, reduction=reduction, backend=b, **hp)
           for b in ("reference", db_backend)}
    torch.testing.assert_close(mod[db_backend](logits.float(), targets), mod["reference"](logits.float(), targets),
                               rtol=2e-5, atol=1e-6)


def test_reference_gradcheck_and_autocast():
    logits, targets = _data(4, b=4, ignore=True)
    z = (logits / 3).double().requires_grad_(True)
    loss_fn = build_loss("db-focal", CLASS_FREQ, NUM_SAMPLES, backend="reference").double()
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, targets), (z,), eps=1e-6, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(logits.bfloat16(), targets)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, loss_fn(logits.bfloat16().float(), targets))


def test_select_backend_is_the_one_choice():
    z, t = _data(21)
    assert fast.select_backend(z, t, "torch") == "torch"
    assert fast.select_backend(z.to(torch.float16), t, "auto") in ("kernel", "torch")
    meta = torch.zeros(2, 2, device="meta")
    assert fast.select_backend(meta, meta, "auto") == "torch"
    with pytest.raises(ValueError, match="backend='kernel' needs CPU logits"):
        fast.select_backend(meta, meta, "kernel")
    _raises(ValueError, r"`backend` to be one of \('auto', 'torch', 'kernel', 'reference'\)",
            distribution_balanced_loss, z, t, CLASS_FREQ, NUM_SAMPLES, backend="fast")


def test_rebalance_ratio_and_map_compose_to_the_weight():
    targets = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, -1, 0]])
    freq = torch.tensor([2.0, 8.0, 4.0], dtype=torch.float64)
    r = rebalance_ratio(targets, freq)
    assert r.dtype == torch.float64 and torch.isinf(r[2]).all()
    torch.testing.assert_close(r[0], torch.tensor([0.5, 0.125, 0.25], dtype=torch.float64) / 0.625)
    torch.testing.assert_close(r[3], torch.tensor([1.0, 0.25, 0.5], dtype=torch.float64))  # -1 is not positive
    torch.testing.assert_close(rebalance_weight(targets, freq), rebalance_map(r))
    torch.testing.assert_close(rebalance_map(r, 0.2, 0.0, 0.3), torch.full_like(r, 0.7))  # beta = 0, also at r = inf
    assert rebalance_ratio(targets, [2, 8, 4]).dtype == torch.float32
    _raises(ValueError, r"values in \{0, 1, -1\}", rebalance_ratio, torch.tensor([[2, 0, 0]]), freq)


def test_db_params_is_one_validated_frozen_configuration():
    p = DBParams(mu=0.2, rebalance=0)
    assert (p.mu, p.rebalance, p.alpha) == (0.2, False, 0.1) and isinstance(DBParams(gamma=2).gamma, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.mu = 0.5
    _raises(ValueError, r"`neg_scale` to be a finite number > 0", DBParams, neg_scale=0)
    _raises(TypeError, r"`beta` to be a number", DBParams, beta="x")
    _raises(TypeError, r"Unknown DB hyper-parameter\(s\) \['lam'\]; valid ones are \['alpha'", DBParams.of, lam=1)
    assert DBParams.of(p, gamma=0.0) == DBParams(mu=0.2, rebalance=False, gamma=0.0)
    # params= and keywords on the functional, the module and build_loss give the same loss
    z, t = _data(22)
    ref = distribution_balanced_loss(z, t, CLASS_FREQ, NUM_SAMPLES, mu=0.2, rebalance=False)
    torch.testing.assert_close(distribution_balanced_loss(z, t, CLASS_FREQ, NUM_SAMPLES, p), ref)
    mod = DistributionBalancedLoss(CLASS_FREQ, NUM_SAMPLES, params=DBParams(mu=0.9), mu=0.2, rebalance=False)
    assert mod.params == p and mod.mu == 0.2 and "mu=0.2" in repr(mod)
    torch.testing.assert_close(mod(z, t), ref)
    torch.testing.assert_close(build_loss("db-focal", CLASS_FREQ, NUM_SAMPLES, params=p)(z, t), ref)
    assert build_loss("r-bce", CLASS_FREQ, NUM_SAMPLES).params == DBParams(gamma=0.0, neg_scale=1.0, init_bias=0.0)


def test_functional_keeps_the_former_names():
    for name in functional.__all__:
        assert getattr(functional, name) is not None
    assert functional.distribution_balanced_loss is reference.distribution_balanced_loss
    assert functional.sigmoid_focal_loss is baselines.sigmoid_focal_loss
    assert modules.SigmoidFocalLoss is baselines.SigmoidFocalLoss


def test_rebalance_weight_values():
    targets = torch.tensor([[1, 1, 0], [0, 0, 1], [0, 0, 0], [1, -1, 0]])
    w = rebalance_weight(targets, [2, 8, 4], alpha=0.1, beta=10.0, mu=0.3)
    r0 = torch.tensor([0.5, 0.125, 0.25]) / 0.625  # 1/n_k over (1/2 + 1/8)
    torch.testing.assert_close(w[0], 0.1 + torch.sigmoid(10 * (r0 - 0.3)))
    torch.testing.assert_close(w[1], 0.1 + torch.sigmoid(10 * (torch.tensor([2.0, 0.5, 1.0]) - 0.3)))
    torch.testing.assert_close(w[2], torch.full((3,), 1.1))  # no positive: alpha + 1
    torch.testing.assert_close(w[3], 0.1 + torch.sigmoid(10 * (torch.tensor([1.0, 0.25, 0.5]) - 0.3)))


def test_negative_tolerant_bias_is_prior_logit():
    nu = negative_tolerant_bias(CLASS_FREQ, NUM_SAMPLES, init_bias=1.0)
    p = torch.tensor(CLASS_FREQ, dtype=torch.float32) / NUM_SAMPLES
    torch.testing.assert_close(torch.sigmoid(nu), p)
    assert torch.equal(negative_tolerant_bias(CLASS_FREQ, NUM_SAMPLES, 0.0), torch.zeros(5))
    torch.testing.assert_close(negative_tolerant_bias(CLASS_FREQ, NUM_SAMPLES, 0.05), 0.05 * nu)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kwargs", [
    ("db-focal", {}),
    ("db-focal", {"reduction": "sum", "gamma": 1.0, "neg_scale": 2.0}),
    ("r-bce", {}),
    ("focal", {}),
    ("cb-focal", {}),
    ("ldam", {"s": 5.0}),
    ("asl", {"detach_focal": False}),
    ("asl", {"detach_focal": False, "clip": 0.0, "gamma_pos": 1.0}),
])
def test_gradcheck(name, kwargs):
    logits, targets = _data(4, b=4, ignore=True)
    logits = (logits / 3).double().requires_grad_(True)
    loss_fn = build_loss(name, CLASS_FREQ, NUM_SAMPLES, **kwargs).double()
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, targets), (logits,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, kwargs", [
    ("db-focal", {}),
    ("db-focal", {"reduction": "sum", "gamma": 1.0, "neg_scale": 2.0}),
    ("db-focal", {"reduction": "none", "gamma": 2.5, "beta": 0.0}),
    ("r-bce", {}),
    ("ntr-focal", {"reduction": "sum"}),
])
def test_gradcheck_db_backends(name, kwargs, db_backend):
    logits, targets = _data(4, b=4, ignore=True)
    logits = (logits / 3).double().requires_grad_(True)
    loss_fn = build_loss(name, CLASS_FREQ, NUM_SAMPLES, backend=db_backend, **kwargs).double()
    assert torch.autograd.gradcheck(lambda z: loss_fn(z, targets), (logits,), eps=1e-6, atol=1e-7)


def _value_and_grad(fn, logits):
    z = logits.detach().clone().requires_grad_(True)
    out = fn(z)
    out.sum().backward()
    return out.detach(), z.grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_db_without_weighting_ntr_focal_is_bce(reduction, db_backend):
    logits, targets = _data(5)
    db = DistributionBalancedLoss(CLASS_FREQ, NUM_SAMPLES, gamma=0.0, neg_scale=1.0, init_bias=0.0,
                                  rebalance=False, reduction=reduction, backend=db_backend)
    v1, g1 = _value_and_grad(lambda z: db(z, targets), logits)
    v2, g2 = _value_and_grad(lambda z: F.binary_cross_entropy_with_logits(z, targets.float(), reduction=reduction),
                             logits)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(g1, g2)


def test_focal_gamma0_is_bce_and_bce_loss():
    logits, targets = _data(6)
    ref = _value_and_grad(lambda z: F.binary_cross_entropy_with_logits(z, targets.float()), logits)
    for fn in (lambda z: sigmoid_focal_loss(z, targets, gamma=0.0),
               lambda z: build_loss("bce", CLASS_FREQ, NUM_SAMPLES)(z, targets),
               lambda z: build_loss("focal", CLASS_FREQ, NUM_SAMPLES, gamma=0.0)(z, targets)):
        v, g = _value_and_grad(fn, logits)
        torch.testing.assert_close(v, ref[0])
        torch.testing.assert_close(g, ref[1])


def test_focal_matches_textbook_formula():
    logits, targets = _data(7)
    p = torch.sigmoid(logits)
    p_t = torch.where(targets == 1, p, 1 - p)
    ref = -((1 - p_t) ** 2 * torch.log(p_t))
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, reduction="none"), ref, rtol=1e-5, atol=1e-6)
    a_t = torch.where(targets == 1, 0.25, 0.75)
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, alpha=0.25, reduction="none"), a_t * ref,
                               rtol=1e-5, atol=1e-6)


def test_ntr_noop_and_components(db_backend):
    logits, targets = _data(8)
    focal = sigmoid_focal_loss(logits, targets, gamma=2.0, reduction="none")
    no_ntr = distribution_balanced_loss(logits, targets, CLASS_FREQ, NUM_SAMPLES, neg_scale=1.0, init_bias=0.0,
                                        rebalance=False, reduction="none", backend=db_backend)
    torch.testing.assert_close(no_ntr, focal)
    # r-focal = focal weighted by rebalance_weight
    r_focal = build_loss("r-focal", CLASS_FREQ, NUM_SAMPLES, reduction="none", backend=db_backend)(logits, targets)
    torch.testing.assert_close(r_focal, focal * rebalance_weight(targets, CLASS_FREQ))
    # ntr-focal: the focal loss of the shifted / scaled logits, negatives down-weighted by neg_scale
    nu = negative_tolerant_bias(CLASS_FREQ, NUM_SAMPLES, 0.05)
    z2 = torch.where(targets == 1, logits + nu, 5.0 * (logits + nu))
    ref = sigmoid_focal_loss(z2, targets, reduction="none") * torch.where(targets == 1, 1.0, 0.2)
    ntr = build_loss("ntr-focal", CLASS_FREQ, NUM_SAMPLES, reduction="none", backend=db_backend)(logits, targets)
    torch.testing.assert_close(ntr, ref)


def test_baseline_formulas():
    logits, targets = _data(9)
    bce = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
    inv = 1 / torch.tensor(CLASS_FREQ, dtype=torch.float32)
    rw = build_loss("rw", CLASS_FREQ, NUM_SAMPLES, reduction="none")(logits, targets)
    torch.testing.assert_close(rw, bce * inv / inv.mean())
    rw_sqrt = build_loss("rw-sqrt", CLASS_FREQ, NUM_SAMPLES, reduction="none")(logits, targets)
    torch.testing.assert_close(rw_sqrt, bce * inv.sqrt() / inv.sqrt().mean())
    cb = torch.tensor([(1 - 0.9) / (1 - 0.9 ** n) for n in CLASS_FREQ])
    cb = cb / cb.sum() * len(CLASS_FREQ)
    torch.testing.assert_close(class_balanced_weight(CLASS_FREQ), cb)
    torch.testing.assert_close(build_loss("cb-focal", CLASS_FREQ, NUM_SAMPLES, reduction="none")(logits, targets),
                               sigmoid_focal_loss(logits, targets, reduction="none") * cb)
    margin = torch.tensor([n ** -0.25 for n in CLASS_FREQ])
    margin = margin * 0.5 / margin.max()
    torch.testing.assert_close(ldam_margin(CLASS_FREQ), margin)
    ref = F.binary_cross_entropy_with_logits(30 * (logits - targets * margin), targets.float())
    torch.testing.assert_close(build_loss("ldam", CLASS_FREQ, NUM_SAMPLES)(logits, targets), ref)
    assert inverse_frequency_weight(CLASS_FREQ).mean().item() == pytest.approx(1.0)


def test_asl_matches_official_formula():
    logits, targets = _data(10)
    y = targets.float()
    p = torch.sigmoid(logits)
    xs_neg = (1 - p + 0.05).clamp(max=1)
    ce = y * torch.log(p.clamp(min=1e-8)) + (1 - y) * torch.log(xs_neg.clamp(min=1e-8))
    pt = p * y + xs_neg * (1 - y)
    ref = -(ce * torch.pow(1 - pt, 0 * y + 4 * (1 - y)))
    torch.testing.assert_close(asymmetric_loss(logits, targets, reduction="none"), ref, rtol=1e-5, atol=1e-6)
    assert build_loss("asl", CLASS_FREQ, NUM_SAMPLES, reduction="sum")(logits, targets).item() == pytest.approx(
        ref.sum().item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# reduction, ignore_index, dtypes, devices
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_reduction_and_ignore_semantics(name):
    logits, targets = _data(11, ignore=True)
    mask = targets != -1
    none = build_loss(name, CLASS_FREQ, NUM_SAMPLES, reduction="none")(logits, targets)
    assert none.shape == logits.shape
    assert torch.all(none[~mask] == 0)
    total = build_loss(name, CLASS_FREQ, NUM_SAMPLES, reduction="sum")(logits, targets)
    mean = build_loss(name, CLASS_FREQ, NUM_SAMPLES)(logits, targets)
    torch.testing.assert_close(total, none.sum())
    torch.testing.assert_close(mean, none.sum() / mask.sum())
    # an ignored entry has zero gradient, and its logit does not change the loss
    z = logits.clone().requires_grad_(True)
    build_loss(name, CLASS_FREQ, NUM_SAMPLES)(z, targets).backward()
    assert torch.all(z.grad[~mask] == 0) and torch.any(z.grad[mask] != 0)
    z2 = logits.clone()
    z2[~mask] = 100.0
    torch.testing.assert_close(build_loss(name, CLASS_FREQ, NUM_SAMPLES)(z2, targets), mean)


def test_ignored_entries_do_not_count_as_positive():
    logits, targets = _data(12)
    t_ign = targets.clone()
    t_ign[0, 2] = 255  # a positive turned into "ignore"
    t_neg = targets.clone()
    t_neg[0, 2] = 0
    ign = distribution_balanced_loss(logits, t_ign, CLASS_FREQ, NUM_SAMPLES, reduction="none", ignore_index=255)
    neg = distribution_balanced_loss(logits, t_neg, CLASS_FREQ, NUM_SAMPLES, reduction="none")
    keep = torch.ones_like(targets, dtype=torch.bool)
    keep[0, 2] = False
    torch.testing.assert_close(ign[keep], neg[keep])
    assert ign[0, 2] == 0


def test_all_masked_mean_is_zero(db_backend):
    logits = torch.randn(2, 5, requires_grad=True)
    loss = build_loss("db-focal", CLASS_FREQ, NUM_SAMPLES, backend=db_backend)(logits, torch.full((2, 5), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["db-focal", "focal", "ldam", "asl"])
def test_half_precision_logits_give_float32(dtype, name):
    logits, targets = _data(13)
    half = logits.to(dtype)
    loss_fn = build_loss(name, CLASS_FREQ, NUM_SAMPLES)
    out = loss_fn(half, targets)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, loss_fn(half.float(), targets))  # computed in float32
    torch.testing.assert_close(out, loss_fn(logits, targets), rtol=0.05, atol=0.05 if name == "ldam" else 5e-3)
    z = half.clone().requires_grad_(True)
    loss_fn(z, targets).backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad.float()).all()


def test_autocast_cpu_bf16():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(6, 8)
    _, targets = _data(14)
    loss_fn = build_loss("db-focal", CLASS_FREQ, NUM_SAMPLES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = loss_fn(logits, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()
    torch.testing.assert_close(loss, loss_fn(logits.float(), targets))


def test_buffers_follow_module_dtype_and_device():
    loss_fn = build_loss("db-focal", torch.tensor(CLASS_FREQ), NUM_SAMPLES)
    assert "class_freq" in dict(loss_fn.named_buffers())
    assert loss_fn.class_freq.dtype == torch.float32
    logits, targets = _data(15)
    ref = loss_fn(logits, targets)
    loss64 = loss_fn.to(torch.float64)
    assert loss64.class_freq.dtype == torch.float64
    out = loss64(logits.double(), targets)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref)
    for name in ("cb-focal", "ldam"):
        fn = build_loss(name, CLASS_FREQ, NUM_SAMPLES)
        assert len(list(fn.buffers())) == 1
        assert fn.to(torch.float64)(logits.double(), targets).dtype == torch.float64
    # state_dict round trip
    other = build_loss("db-focal", [1, 1, 1, 1, 1], NUM_SAMPLES)
    other.load_state_dict(build_loss("db-focal", CLASS_FREQ, NUM_SAMPLES).state_dict())
    torch.testing.assert_close(other(logits, targets), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_cuda_matches_cpu(name):
    logits, targets = _data(16, ignore=True)
    loss_fn = build_loss(name, torch.tensor(CLASS_FREQ), NUM_SAMPLES)
    ref = loss_fn(logits, targets)
    out = loss_fn.to("cuda")(logits.cuda(), targets.cuda())
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# every loss: builds, finite, no positive, inputs unmodified
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_builds_finite_and_leaves_inputs_alone(name):
    logits, targets = _data(17, ignore=True)
    freq = torch.tensor(CLASS_FREQ)
    copies = logits.clone(), targets.clone(), freq.clone()
    loss_fn = build_loss(name, freq, NUM_SAMPLES)
    z = logits.requires_grad_(True)
    loss = loss_fn(z, targets)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert torch.equal(logits.detach(), copies[0]) and torch.equal(targets, copies[1]) and torch.equal(freq, copies[2])
    assert type(loss_fn).__name__ in repr(loss_fn) and "reduction='mean'" in repr(loss_fn)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_sample_without_positive_is_finite(name):
    logits = torch.randn(3, 5, requires_grad=True)
    loss = build_loss(name, CLASS_FREQ, NUM_SAMPLES)(logits, torch.zeros(3, 5, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_extreme_logits_are_finite():
    logits = torch.tensor([[200.0, -200.0, 50.0, -50.0, 0.0]] * 2, requires_grad=True)
    targets = torch.tensor([[1, 1, 0, 0, 1], [0, 0, 1, 1, 0]])
    for name in LOSS_NAMES:
        loss = build_loss(name, CLASS_FREQ, NUM_SAMPLES)(logits, targets)
        grad, = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), name


def test_build_loss_defaults_and_overrides():
    db = build_loss("db-focal", CLASS_FREQ, NUM_SAMPLES)
    assert (db.alpha, db.beta, db.mu, db.neg_scale, db.init_bias, db.gamma, db.scale, db.rebalance) == (
        0.1, 10.0, 0.3, 5.0, 0.05, 2.0, 1.0, True)
    assert build_loss("ntr-focal", CLASS_FREQ, NUM_SAMPLES).rebalance is False
    r_bce = build_loss("r-bce", CLASS_FREQ, NUM_SAMPLES)
    assert (r_bce.gamma, r_bce.neg_scale, r_bce.init_bias) == (0.0, 1.0, 0.0)
    asl = build_loss("asl", CLASS_FREQ, NUM_SAMPLES)
    assert (asl.gamma_pos, asl.gamma_neg, asl.clip, asl.eps) == (0.0, 4.0, 0.05, 1e-8)
    assert build_loss("focal", CLASS_FREQ, NUM_SAMPLES).alpha is None
    cb = build_loss("cb-focal", CLASS_FREQ, NUM_SAMPLES, cb_beta=0.99)
    torch.testing.assert_close(cb.class_weight, class_balanced_weight(CLASS_FREQ, 0.99))
    assert build_loss("ldam", CLASS_FREQ, NUM_SAMPLES).s == 30.0
    assert len(set(LOSS_NAMES)) == len(LOSS_NAMES) == 11


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------
def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_input_errors():
    loss_fn = build_loss("db-focal", CLASS_FREQ, NUM_SAMPLES)
    z, t = _data(18)
    _raises(ValueError, r"shape of `logits` \(6, 5\), but got \(6, 4\)", loss_fn, z, t[:, :4])
    _raises(ValueError, r"2-D \(B, C\), but got shape \(30,\)", loss_fn, z.flatten(), t.flatten())
    _raises(ValueError, r"Expected 5 classes \(len\(class_freq\)\), but `logits` has 4", loss_fn, z[:, :4], t[:, :4])
    bad = t.clone()
    bad[2, 3] = 2
    _raises(ValueError, r"values in \{0, 1, -1\}.*got 2 at \(row, class\) = \(2, 3\)", loss_fn, z, bad)
    _raises(ValueError, r"got 0.5 at \(row, class\) = \(0, 0\)", loss_fn, z, torch.full_like(z, 0.5))
    _raises(TypeError, r"floating-point tensor, but got dtype torch.int64", loss_fn, t, t)
    _raises(TypeError, r"`targets` to be a torch.Tensor", loss_fn, z, t.tolist())
    _raises(ValueError, r"`reduction` to be one of \('none', 'mean', 'sum'\), but got 'avg'",
            build_loss, "focal", CLASS_FREQ, NUM_SAMPLES, reduction="avg")
    _raises(ValueError, r"`reduction` to be one of", sigmoid_focal_loss, z, t, reduction="max")
    _raises(ValueError, r"ignore_index.*differ from the labels 0 and 1", build_loss, "bce", CLASS_FREQ, NUM_SAMPLES,
            ignore_index=1)


def test_class_statistics_errors():
    _raises(ValueError, r"Class 2 has no positive training sample", build_loss, "db-focal", [3, 2, 0], 5)
    _raises(ValueError, r"Class 1 is positive in every training sample", DistributionBalancedLoss, [3, 5, 1], 5)
    _raises(ValueError, r"num_samples` >= max\(class_freq\).*class_freq\[1\] = 9", build_loss, "bce", [3, 9], 5)
    _raises(ValueError, r"finite counts >= 0, but got -1.0 for class 0", build_loss, "focal", [-1, 2], 5)
    _raises(ValueError, r"Class 0 has no positive", build_loss, "ldam", [0, 2], 5)
    _raises(ValueError, r"Class 0 has no positive", build_loss, "cb-focal", [0, 2], 5)
    _raises(ValueError, r"Class 1 has no positive", build_loss, "rw", [1, 0], 5)
    _raises(ValueError, r"Class 1 has no positive", rebalance_weight, torch.zeros(1, 2), [1, 0])
    _raises(ValueError, r"Class 1 is positive in every", negative_tolerant_bias, [1, 5], 5)
    # losses that do not use class counts accept empty or always-positive classes
    for name in ("bce", "focal", "asl"):
        assert torch.isfinite(build_loss(name, [0, 5, 2], 5)(torch.randn(2, 3), torch.ones(2, 3)))
    # NTR off and re-balancing off: n_k = N and n_k = 0 are fine
    assert torch.isfinite(DistributionBalancedLoss([0, 5], 5, init_bias=0.0, rebalance=False)(
        torch.randn(2, 2), torch.ones(2, 2)))


@pytest.mark.parametrize("key, value", [
    ("alpha", -0.1), ("beta", float("nan")), ("mu", float("inf")), ("neg_scale", 0.0), ("init_bias", -0.05),
    ("gamma", -1.0), ("scale", -2.0),
])
def test_bad_hyperparameters(key, value):
    _raises(ValueError, rf"`{key}` to be a finite number", build_loss, "db-focal", CLASS_FREQ, NUM_SAMPLES,
            **{key: value})
    z, t = _data(19)
    _raises(ValueError, rf"`{key}` to be a finite number", distribution_balanced_loss, z, t, CLASS_FREQ, NUM_SAMPLES,
            **{key: value})


def test_other_hyperparameter_errors():
    _raises(ValueError, r"`gamma_neg` to be a finite number >= 0, but got -4", build_loss, "asl", CLASS_FREQ, 50,
            gamma_neg=-4)
    _raises(ValueError, r"`clip` in \[0, 1\)", build_loss, "asl", CLASS_FREQ, 50, clip=1.0)
    _raises(ValueError, r"`s` to be a finite number > 0", build_loss, "ldam", CLASS_FREQ, 50, s=0)
    _raises(ValueError, r"`beta` in \[0, 1\)", build_loss, "cb-focal", CLASS_FREQ, 50, cb_beta=1.0)
    _raises(ValueError, r"`alpha` in \[0, 1\] or None", build_loss, "focal", CLASS_FREQ, 50, alpha=2.0)
    _raises(TypeError, r"`mu` to be a number", build_loss, "db-focal", CLASS_FREQ, 50, mu="high")
    _raises(ValueError, r"`num_samples` to be a finite number > 0", build_loss, "bce", CLASS_FREQ, 0)


def test_factory_errors():
    _raises(ValueError, r"`name` to be one of \('bce', 'rw', .*'asl'\), but got 'db'", build_loss, "db",
            CLASS_FREQ, NUM_SAMPLES)
    _raises(TypeError, r"Loss 'db-focal' got unexpected argument\(s\) \['lambda_'\]; valid ones are \[.*'mu'",
            build_loss, "db-focal", CLASS_FREQ, NUM_SAMPLES, lambda_=2.0)
    _raises(TypeError, r"\['cb_beta'\]", build_loss, "focal", CLASS_FREQ, NUM_SAMPLES, cb_beta=0.9)
    _raises(TypeError, r"\['class_weight'\]", build_loss, "rw", CLASS_FREQ, NUM_SAMPLES, class_weight=None)
    _raises(ValueError, r"1-D \(C,\)", build_loss, "bce", [[1, 2]], NUM_SAMPLES)


def test_docstring_examples():
    for mod in (reference, baselines, _common, functional, modules, factory):
        result = doctest.testmod(mod, extraglobs={"torch": torch})
        assert result.failed == 0 and result.attempted > 0, mod.__name__
