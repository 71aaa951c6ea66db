"""Tests of dbloss.methods: methods are plug-ins; the training loop never asks which method it runs."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import dbloss.training.engine as engine
from dbloss.config import load_config
from dbloss.methods import METHODS, create_method
from dbloss.methods.base import Method, Stage, second_stage
from dbloss.training.engine import train


@dataclass
class ToyOptions:
    """The toy method's own option: a factor on every logit."""

    temperature: float = 2.0

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"Expected `method.temperature` > 0, but got {self.temperature!r}")


class Scaled(nn.Module):
    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    @property
    def classifier(self) -> nn.Module:
        return self.model.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


class Toy(Method):
    """A method written in this file alone: the logits divided by a temperature, and a second stage
    that trains only the classifier, counted by the hooks it is called through."""

    name = "toy"
    Options = ToyOptions
    calls: dict[str, int] = {}

    def _count(self, hook: str) -> None:
        Toy.calls[hook] = Toy.calls.get(hook, 0) + 1

    def wrap(self, model, cfg):
        self._count("wrap")
        return Scaled(model, self.options.temperature)

    def step_loss(self, net, loss_fn, x, y, cfg, device, epoch):
        self._count("step_loss")
        return super().step_loss(net, loss_fn, x, y, cfg, device, epoch)

    def stages(self, cfg):
        return [Stage(1, cfg, 0), second_stage(cfg, 1, "random", None, "toy-head")]

    def enter_stage(self, model, stage, *, fresh, context=None):
        self._count("enter_stage")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.classifier.parameters():
            p.requires_grad_(True)


def test_a_method_added_in_a_test_file_trains_end_to_end(feature_recipe, monkeypatch, tmp_path):
    monkeypatch.setitem(METHODS, "toy", Toy)
    Toy.calls = {}
    cfg = load_config(None, [*feature_recipe("toy", schedule__epochs=1), "method.name=toy", "method.temperature=4"])
    assert cfg.method.options == ToyOptions(4.0)
    res = train(cfg, progress=False)
    assert Toy.calls["wrap"] == 1 and Toy.calls["enter_stage"] == 1 and Toy.calls["step_loss"] > 0
    assert res["sampler"] == "random, then random" and 0.0 <= res["mAP"]["total"] <= 1.0
    log = [json.loads(line) for line in (Path(cfg.run.out_dir) / "log.jsonl").read_text().splitlines()]
    assert [r["method"] for r in log if r["type"] == "stage"] == ["toy-head"]
    saved = load_config(Path(cfg.run.out_dir) / "config.yaml")  # its options are saved and read back in its section
    assert saved.method.name == "toy" and saved.method.options.temperature == 4.0
    with pytest.raises(ValueError, match=r"method.temperature` > 0"):
        load_config(None, ["method.name=toy", "method.temperature=0"])
    with pytest.raises(ValueError, match=r"'method.temprature' in section `method`; did you mean method\.temperature"):
        load_config(None, ["method.name=toy", "method.temprature=1"])


def test_the_training_loop_never_names_a_method():
    """The engine reaches every method through its hooks: no method's name, module, class or option appears in
    its code (docstrings may tell the reader which methods exist)."""
    for path in sorted(Path(engine.__file__).parent.glob("*.py")):  # the loop and its helpers: dbloss.training
        _names_no_method(ast.parse(path.read_text()), path.name)


def _names_no_method(tree: ast.Module, where: str) -> None:
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    words = {n.value.lower() for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}
    words |= {n.id.lower() for n in ast.walk(tree) if isinstance(n, ast.Name)}
    words |= {n.attr.lower() for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    words |= {a.name.lower() for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in modules if m and m.startswith("dbloss.methods.") and m != "dbloss.methods.base"}, where
    for name in ("bbn", "oltr", "gcn", "decoupling", "stage2", "centroid", "tau_norm", "crt", "lws"):
        assert not [w for w in words if name in w], (where, name)


def test_every_shipped_method_is_created_from_its_section():
    for name, cls in METHODS.items():
        cfg = load_config(None, [f"method.name={name}"] + (["method.stage2_epochs=1"] if name == "decoupling" else []))
        method = create_method(cfg.method)
        assert isinstance(method, cls) and method.name == name
        assert len(method.stages(cfg)) == (2 if name in ("oltr", "decoupling") else 1)
