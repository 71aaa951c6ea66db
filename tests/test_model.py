"""Tests of dbloss.models.classifier: the paper's classifier and feature heads."""

from __future__ import annotations

import pytest
import torch
import torchvision

from dbloss.models.classifier import FeatureClassifier, build_model


def test_resnet_classifier_shapes_and_frozen_first_stage(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")  # "pretrained" weights
    model = build_model(20, backbone="resnet18", weights=str(tmp_path / "r18.pth"))  # frozen_stages: 1 by default
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 20)
    stem, layer1, layer2 = model.backbone[0], model.backbone[1], model.backbone[2]
    assert not any(p.requires_grad for p in stem.parameters())
    assert not any(p.requires_grad for p in layer1.parameters())
    assert all(p.requires_grad for p in layer2.parameters())
    model.train()
    assert not stem[1].training and not layer1[0].bn1.training  # frozen BN statistics stay fixed
    assert layer2[0].bn1.training and model.neck.bn.training
    # the paper's neck: Linear(512 -> 256) + BN + ReLU + Dropout(0.5), then a linear classifier
    assert model.neck.fc.out_features == 256 and model.neck.drop.p == 0.5
    assert model.classifier.in_features == 256


def test_local_weights_file_is_loaded(tmp_path):
    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = build_model(5, backbone="resnet18", weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(model.backbone[0][0].weight, ref.conv1.weight)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model(5, backbone="resnet18", weights=str(tmp_path / "missing.pth"))


def test_other_backbones_and_errors():
    model = build_model(3, backbone="mobilenet_v3_small", weights=None)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert build_model(3, backbone="small_cnn")(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="Unknown backbone 'resnet5'"):
        build_model(3, backbone="resnet5")
    with pytest.raises(ValueError, match="in_features"):
        build_model(3, input_type="features")
    with pytest.raises(ValueError, match="num_classes"):
        build_model(0)


def test_feature_classifier_linear_and_mlp():
    lin = build_model(4, input_type="features", in_features=10, neck_dim=0)
    assert isinstance(lin, FeatureClassifier) and lin(torch.randn(3, 10)).shape == (3, 4)
    assert sum(isinstance(m, torch.nn.Linear) for m in lin.modules()) == 1
    mlp = build_model(4, input_type="features", in_features=10, neck_dim=16)
    assert mlp(torch.randn(3, 10)).shape == (3, 4)
    assert sum(isinstance(m, torch.nn.Linear) for m in mlp.modules()) == 2


@pytest.mark.parametrize("backbone", ["resnet18", "small_cnn"])
def test_from_scratch_freezes_nothing_and_refuses_to_freeze_random_layers(backbone, tmp_path):
    """Freezing only makes sense for pretrained layers: weights=none trains every parameter."""
    model = build_model(5, backbone=backbone, weights=None)
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError, match="frozen_stages=1 would freeze randomly initialised layers"):
        build_model(5, backbone=backbone, weights=None, frozen_stages=1)
    # with weights, the paper's first stage is frozen by default (small_cnn: its first two conv stages)
    torch.save(build_model(5, backbone=backbone, weights=None).backbone.state_dict() if backbone == "small_cnn"
               else torchvision.models.resnet18().state_dict(), tmp_path / "w.pth")
    pre = build_model(5, backbone=backbone, weights=str(tmp_path / "w.pth"))
    frozen = [n for n, p in pre.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("backbone.0.", "backbone.1.", "backbone.stages.0.", "backbone.stages.1."))
                          for n in frozen)
    assert all(p.requires_grad for p in build_model(5, backbone=backbone, weights=str(tmp_path / "w.pth"),
                                                     frozen_stages=0).parameters())


def test_small_cnn_loads_local_weights_and_refuses_hub_names(tmp_path):
    ref = build_model(3, backbone="small_cnn", weights=None).backbone
    torch.save(ref.state_dict(), tmp_path / "s.pth")
    model = build_model(3, backbone="small_cnn", weights=str(tmp_path / "s.pth"))
    torch.testing.assert_close(model.backbone.stages[2][0].weight, ref.stages[2][0].weight)
    with pytest.raises(ValueError, match="small_cnn' has no published weights"):
        build_model(3, backbone="small_cnn", weights="DEFAULT")
    torch.save({"stages.0.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="wrong shape"):
        build_model(3, backbone="small_cnn", weights=str(tmp_path / "bad.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable weights file"):
        build_model(3, backbone="small_cnn", weights=str(tmp_path / "junk.pth"))
