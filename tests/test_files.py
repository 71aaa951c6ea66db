"""Tests of dbloss.files: atomic writes, strict JSON, checkpoints read as data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dbloss.errors import UsageError
from dbloss.files import jsonable, load_checkpoint, save_checkpoint, write_json, write_text


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old")
    write_text(path, "new ±")
    assert path.read_text(encoding="utf-8") == "new ±"
    write_json(tmp_path / "m.json", {"x": float("nan"), "y": np.float32(0.5), "t": torch.tensor([1, 2])})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": None, "y": 0.5, "t": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"w": torch.ones(2)})
    with pytest.raises(Exception):
        save_checkpoint(path, {"f": lambda: 0})  # not picklable: the write fails half-way
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_jsonable_is_strict_json():
    obj = jsonable({1: [math.inf, np.int64(3)], "a": (np.arange(2.0),)})
    assert obj == {"1": [None, 3], "a": [[0.0, 1.0]]}
    json.dumps(obj, allow_nan=False)


def test_load_checkpoint_reads_plain_data_and_names_bad_files(tmp_path):
    state = {"model": {"w": torch.zeros(2)}, "config": {"lr": 0.1, "steps": [0.5], "name": None}, "epoch": 3}
    save_checkpoint(tmp_path / "ok.pt", state)
    back = load_checkpoint(tmp_path / "ok.pt")
    assert back["config"] == state["config"] and back["epoch"] == 3
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match=r"junk\.pt: not a readable weights file"):
        load_checkpoint(tmp_path / "junk.pt", kind="weights")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"a": np.zeros(2)}, tmp_path / "numpy.pt")  # a numpy array needs numpy's reconstructor: refused
    with pytest.raises(UsageError, match=r"numpy\.pt: refused to load"):
        load_checkpoint(tmp_path / "numpy.pt")
