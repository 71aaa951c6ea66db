"""timm backbones: build, forward, freezing per family, local weights, preprocessing, errors.

Random-init small models only (no download): ``pretrained=False`` and weights files made here.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("timm")

from dbloss.models.backbones import (MissingDependencyError, backbone_preprocessing, build_timm_backbone,  # noqa: E402
                              timm_stages)
from dbloss.errors import UsageError  # noqa: E402
from dbloss.models.classifier import MultiLabelClassifier, build_model  # noqa: E402


def _weights_file(tmp_path, name, **kwargs):
    """A local state dict of a random-init timm model (with its classifier, as timm's checkpoints have)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=7, **kwargs)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def _frozen(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_timm_backbone_builds_and_classifies_pooled_features():
    model = build_model(5, backbone="timm:resnet18", weights=None, neck_dim=16)
    assert isinstance(model, MultiLabelClassifier)
    model.eval()
    assert model.backbone(torch.zeros(2, 3, 64, 64)).shape == (2, 512)  # pooled by timm, not pooled again
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    assert not _frozen(model)  # from scratch: nothing frozen (None -> 0)
    vit = build_model(5, backbone="timm:vit_tiny_patch16_224", weights=None, neck_dim=16).eval()
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 5)  # dynamic_img_size: any recipe image_size


def test_resnet_frozen_stages_freeze_stem_and_first_layers_and_their_batch_norms(tmp_path):
    path, state = _weights_file(tmp_path, "resnet18")
    model = build_model(3, backbone="timm:resnet18", weights=str(path), neck_dim=8)  # None -> the paper's 1
    frozen = _frozen(model.backbone)
    assert frozen == {n for n, _ in model.backbone.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))}
    assert torch.equal(model.backbone.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])  # loaded
    model.train()
    assert not model.backbone.bn1.training and not model.backbone.layer1[0].bn1.training
    assert model.backbone.layer2[0].bn1.training
    before = model.backbone.layer1[0].bn1.running_mean.clone()
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    assert torch.equal(model.backbone.layer1[0].bn1.running_mean, before)  # frozen statistics
    assert model.backbone.layer1[0].conv1.weight.grad is None and model.backbone.layer2[0].conv1.weight.grad is not None
    net, _ = build_timm_backbone("timm:resnet18", str(path), frozen_stages=4)
    assert _frozen(net) == {n for n, _ in net.named_parameters()}  # 4 = every stage: a linear probe


def test_convnext_and_vit_stages(tmp_path):
    assert timm_stages("timm:convnext_atto") == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head.norm"]
    path, _ = _weights_file(tmp_path, "convnext_atto")
    net, dim = build_timm_backbone("timm:convnext_atto", str(path), frozen_stages=2)
    assert dim == 320 and net(torch.zeros(1, 3, 64, 64)).shape == (1, 320)
    assert _frozen(net) == {n for n, _ in net.named_parameters() if n.startswith(("stem.", "stages.0.", "stages.1."))}

    path, _ = _weights_file(tmp_path, "vit_tiny_patch16_224")  # at 224: resized to 32 after loading
    net, dim = build_timm_backbone("timm:vit_tiny_patch16_224", str(path), frozen_stages=3, image_size=32)
    assert dim == 192 and net(torch.zeros(2, 3, 32, 32)).shape == (2, 192)
    stem = ("cls_token", "pos_embed", "patch_embed.", "blocks.0.", "blocks.1.", "blocks.2.")
    assert _frozen(net) == {n for n, _ in net.named_parameters() if n.startswith(stem)}
    assert len(timm_stages(net)) == 1 + 12  # stem + 12 blocks; "all but the last K": frozen_stages = 12 - K


def test_local_weights_that_do_not_fit_are_refused(tmp_path):
    path, _ = _weights_file(tmp_path, "resnet18")
    with pytest.raises(ValueError, match=r"do not match backbone 'timm:convnext_atto'"):
        build_timm_backbone("timm:convnext_atto", str(path))
    state = torch.load(path, weights_only=True)
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong shape for \['layer2.0.conv1.weight'\]"):
        build_timm_backbone("timm:resnet18", str(tmp_path / "wrong.pth"))
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        build_timm_backbone("timm:resnet18", str(tmp_path / "no_such.pth"))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(UsageError, match=r"Unknown timm model 'convnxt_tiny'.*close matches: convnext_tiny"):
        build_timm_backbone("timm:convnxt_tiny")
    path, _ = _weights_file(tmp_path, "resnet18")
    with pytest.raises(UsageError, match=r"frozen_stages=5: .* 4 stages after its stem \(layer1, layer2, layer3, "
                                         r"layer4\)"):
        build_timm_backbone("timm:resnet18", str(path), frozen_stages=5)
    with pytest.raises(ValueError, match="would freeze randomly initialised layers"):
        build_timm_backbone("timm:resnet18", None, frozen_stages=1)
    with pytest.raises(UsageError, match=r"expected weights to be DEFAULT.*'timm:resnet18.TAG'"):
        build_timm_backbone("timm:resnet18", "IMAGENET1K_V1")


def test_preprocessing_is_the_models_own():
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert backbone_preprocessing("timm:resnet50")[:2] == imagenet
    assert backbone_preprocessing("timm:vit_base_patch16_224.augreg_in21k") == ((0.5,) * 3, (0.5,) * 3, 224)
    assert backbone_preprocessing("small_cnn") == (*imagenet, 32)
    pytest.importorskip("open_clip")
    mean, std, size = backbone_preprocessing("clip:ViT-B-16@openai")
    assert (round(mean[0], 4), round(std[0], 4), size) == (0.4815, 0.2686, 224)


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'dbloss\[timm\]'"):
        build_model(3, backbone="timm:resnet18", weights=None)


def test_safetensors_weights_go_through_timms_loader(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    _, state = _weights_file(tmp_path, "resnet18")
    safetensors.save_file(state, str(tmp_path / "model.safetensors"))  # as timm's hub publishes them
    net, _ = build_timm_backbone("timm:resnet18", str(tmp_path / "model.safetensors"))
    assert torch.equal(net.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert _frozen(net) == {n for n, _ in net.named_parameters() if n.startswith(("conv1.", "bn1.", "layer1."))}
    with pytest.raises(ValueError, match=r"model\.safetensors: weights do not match backbone 'timm:convnext_atto'"):
        build_timm_backbone("timm:convnext_atto", str(tmp_path / "model.safetensors"))
