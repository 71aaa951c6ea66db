"""Tests of dbloss.data.text (``dataset=text-csv``) and dbloss.data.features (sparse feature files,
batched fetching), and of their wiring in dbloss.data.pipeline.build_data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
from torch.utils.data import DataLoader, default_collate

from dbloss.config import load_config
from dbloss.data.features import FeatureDataset, collate_features, load_feature_file, load_label_file
from dbloss.data.text import read_label_csv, read_text_csv
from dbloss.data.pipeline import build_data

CLASSES = ["grain", "money", "oil"]
WORDS = {"grain": "wheat corn harvest", "money": "bank rates interest", "oil": "crude barrel opec"}


# --------------------------------------------------------------------------- sparse feature files


def _sparse_set(n: int, dim: int, seed: int) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """Sparse non-negative features where class k lights up columns 3k..3k+2 (learnable by a linear head)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.5, 0.3, 0.15]).astype(np.int64)
    y[np.arange(n), rng.integers(0, 3, n) * (y.sum(1) == 0)] = 1
    x = scipy.sparse.random(n, dim, density=0.05, format="lil", random_state=seed, dtype=np.float64)
    for k in range(3):
        for j in range(3 * k, 3 * k + 3):
            x[np.flatnonzero(y[:, k]), j] = 1.0
    return x.tocsr(), y


def _write_labels(path: Path, y: np.ndarray, form: str) -> None:
    if form == "npy":
        np.save(path, y)
    elif form == "npz":
        np.savez(path, labels=y, class_names=np.array(CLASSES))
    else:
        rows = [f"d{i}," + ",".join(str(v) for v in r) for i, r in enumerate(y)]
        path.write_text("id," + ",".join(CLASSES) + "\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("form", ["npz", "npy", "csv"])
def test_sparse_npz_with_labels_beside(tmp_path, form):
    x, y = _sparse_set(20, 30, seed=0)
    scipy.sparse.save_npz(tmp_path / "tfidf.npz", x)
    _write_labels(tmp_path / f"tfidf_labels.{form}", y, form)
    feats, labels, names = load_feature_file(tmp_path / "tfidf.npz")
    assert scipy.sparse.issparse(feats) and feats.format == "csr" and feats.dtype == np.float32
    np.testing.assert_array_equal(feats.toarray(), x.toarray().astype(np.float32))
    np.testing.assert_array_equal(labels, y)
    assert names == (None if form == "npy" else CLASSES)


def test_label_file_forms_agree(tmp_path):
    _, y = _sparse_set(10, 12, seed=1)
    for form in ("npz", "npy", "csv"):
        _write_labels(tmp_path / f"y.{form}", y, form)
        np.testing.assert_array_equal(load_label_file(tmp_path / f"y.{form}")[0], y)
    (tmp_path / "noid.csv").write_text("a,b\n1,0\n0,0\n")  # the id column is optional; a row may be all-negative
    table = read_label_csv(tmp_path / "noid.csv")
    assert table.class_names == ["a", "b"] and table.labels.tolist() == [[1, 0], [0, 0]]


def test_dense_npz_keeps_working_and_labels_field_overrides(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.savez(tmp_path / "d.npz", features=x, labels=np.eye(4, 2, dtype=np.int64), class_names=np.array(["a", "b"]))
    feats, y, names = load_feature_file(tmp_path / "d.npz")
    assert isinstance(feats, np.ndarray) and feats.dtype == np.float32 and y.tolist() == np.eye(4, 2).tolist()
    assert names == ["a", "b"]
    np.save(tmp_path / "other.npy", np.ones((4, 2), dtype=np.int64))
    assert load_feature_file(tmp_path / "d.npz", tmp_path / "other.npy")[1].tolist() == [[1, 1]] * 4
    np.savez(tmp_path / "nolabels.npz", features=x)  # a dense file without labels: looked for beside it too
    np.save(tmp_path / "nolabels_labels.npy", np.eye(4, 2, dtype=np.int64))
    assert load_feature_file(tmp_path / "nolabels.npz")[1].shape == (4, 2)


def test_sparse_npz_errors(tmp_path):
    x, y = _sparse_set(10, 12, seed=2)
    scipy.sparse.save_npz(tmp_path / "x.npz", x)
    with pytest.raises(FileNotFoundError, match=r"x_labels\.npz.*x_labels\.csv.*`train_labels`"):
        load_feature_file(tmp_path / "x.npz", labels_field="train_labels")
    np.save(tmp_path / "short.npy", y[:7])
    with pytest.raises(ValueError, match=r"short\.npy has 7 label rows, but .*x\.npz has 10 feature rows"):
        load_feature_file(tmp_path / "x.npz", tmp_path / "short.npy")
    with pytest.raises(FileNotFoundError, match=r"labels file not found: .*nope\.npy"):
        load_feature_file(tmp_path / "x.npz", tmp_path / "nope.npy")
    bad = x.copy()
    bad.data[bad.indptr[4]] = np.nan  # a value of row 4
    scipy.sparse.save_npz(tmp_path / "nan.npz", bad)
    with pytest.raises(ValueError, match=r"nan\.npz: .*1 non-finite value.*row 4"):
        load_feature_file(tmp_path / "nan.npz", tmp_path / "short.npy")
    (tmp_path / "bad.csv").write_text("id,a,b\nx,1,2\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 2, column 'b': expected 0 or 1"):
        load_label_file(tmp_path / "bad.csv")


def test_build_data_features_sparse_stays_sparse(tmp_path):
    (tmp_path / "labels").mkdir()
    for split, n, seed in (("train", 40, 0), ("test", 15, 1)):
        x, y = _sparse_set(n, 30, seed)
        scipy.sparse.save_npz(tmp_path / f"{split}.npz", x)
        _write_labels(tmp_path / "labels" / f"{split}.npz", y, "npz")
    cfg = load_config(None, ["data.dataset=features", f"data.train_ann={tmp_path / 'train.npz'}",
                             f"data.test_ann={tmp_path / 'test.npz'}", f"data.train_labels={tmp_path / 'labels' / 'train.npz'}",
                             f"data.test_labels={tmp_path / 'labels' / 'test.npz'}", "data.val_size=0.25"])
    data = build_data(cfg)
    for ds in (data.train, data.val, data.test):
        assert scipy.sparse.issparse(ds.features)
    assert (len(data.train), len(data.val), len(data.test)) == (30, 10, 15)
    assert data.class_names == CLASSES and data.in_features == 30 and data.train_labels.shape == (30, 3)
    cfg.data.train_labels = None  # nothing beside train.npz: the message names the field to set
    with pytest.raises(FileNotFoundError, match="set `train_labels`"):
        build_data(cfg)


# --------------------------------------------------------------------------- batched fetching


@pytest.mark.parametrize("kind", ["dense", "tensor", "csr_matrix", "csr_array", "float64-csc"])
def test_getitems_equals_per_item(kind):
    x, y = _sparse_set(37, 50, seed=3)
    x = {"dense": x.toarray().astype(np.float32), "tensor": torch.from_numpy(x.toarray().astype(np.float32)),
         "csr_matrix": x.astype(np.float32), "csr_array": scipy.sparse.csr_array(x.astype(np.float32)),
         "float64-csc": x.tocsc()}[kind]
    ds = FeatureDataset(x, y)
    idx = [5, 0, 36, 5, -1, 12]
    batch = ds.__getitems__(idx)
    one_by_one = [ds[i] for i in idx]
    assert len(batch) == len(one_by_one)
    for (xb, yb, ib), (xi, yi, ii) in zip(batch, one_by_one):
        assert xb.dtype == xi.dtype == torch.float32 and xb.shape == xi.shape == (50,)
        assert torch.equal(xb, xi) and torch.equal(yb, yi) and ib == ii
    # every collate gives the same batch: the default one, and the copy-free one
    assert [i for _, _, i in batch[1:3]] == idx[1:3] and torch.equal(batch[-1][0], one_by_one[-1][0])
    # every collate gives the same batch: the default one, and the copy-free one
    reference = default_collate(one_by_one)
    for got in (default_collate(batch), collate_features(batch)):
        assert type(got) is type(reference) and len(got) == 3
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, reference))
    assert torch.equal(collate_features(one_by_one)[0], reference[0])  # a plain list: default_collate's result


def test_dataloader_batches_equal_per_item_loader():
    x, y = _sparse_set(70, 40, seed=4)
    fast, slow = FeatureDataset(x, y), FeatureDataset(x, y)
    slow.__getitems__ = None  # the DataLoader falls back to [ds[i] for i in batch]
    loaders = [DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0), collate_fn=c)
               for ds, c in ((fast, collate_features), (fast, None), (slow, None))]
    for a, b, c in zip(*loaders):
        for t1, t2, t3 in zip(a, b, c):
            assert torch.equal(t1, t3) and torch.equal(t2, t3)


# --------------------------------------------------------------------------- text-csv


def _docs(n: int, seed: int) -> list[tuple[str, list[str]]]:
    """n synthetic documents: each class present with its own words, plus shared filler."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        labels = [c for c, p in zip(CLASSES, (0.5, 0.35, 0.2)) if rng.random() < p] or [CLASSES[i % 3]]
        words = " ".join(WORDS[c] for c in labels) + " the market said today " + f"doc{i}"
        out.append((words, labels))
    return out


def _write_text_csv(path: Path, docs: list[tuple[str, list[str]]], mode: str, classes=CLASSES) -> Path:
    if mode == "list":
        lines = ["id,text,topics"] + [f'{i},"{t}",{";".join(ls)}' for i, (t, ls) in enumerate(docs)]
    else:
        lines = ["text," + ",".join(classes)] + [f'"{t}",' + ",".join("1" if c in ls else "0" for c in classes)
                                                 for t, ls in docs]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_text_csv_label_lists_and_columns_agree(tmp_path):
    docs = _docs(12, seed=0) + [("a document with no label", [])]
    a = read_text_csv(_write_text_csv(tmp_path / "a.csv", docs, "list"), label_column="topics")
    b = read_text_csv(_write_text_csv(tmp_path / "b.csv", docs, "columns"))
    assert a.class_names == b.class_names == CLASSES
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.labels[-1].tolist() == [0, 0, 0] and a.texts == b.texts == [t for t, _ in docs]
    assert a.ids == [str(i) for i in range(13)]  # the id column
    # test files are read with the training classes: columns in another order are reordered
    c = read_text_csv(_write_text_csv(tmp_path / "c.csv", docs, "columns", classes=CLASSES[::-1]), classes=CLASSES)
    np.testing.assert_array_equal(c.labels, b.labels)


def test_read_text_csv_long_fields(tmp_path):
    long_text = "word " * 100_000  # 500,000 characters: over csv's default field size limit
    (tmp_path / "long.csv").write_text(f"text,labels\n{long_text},a\n")
    assert len(read_text_csv(tmp_path / "long.csv", label_column="labels").texts[0]) == len(long_text.strip())


def test_read_text_csv_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_text_csv(tmp_path / "nope.csv")
    p = _write_text_csv(tmp_path / "d.csv", _docs(5, seed=1), "list")
    with pytest.raises(ValueError, match=r"no text \(`text_column`\) column 'body'; the columns are \['id', 'text', "
                                         r"'topics'\]"):
        read_text_csv(p, text_column="body", label_column="topics")
    with pytest.raises(ValueError, match=r"no label \(`label_column`\) column 'labels'"):
        read_text_csv(p, label_column="labels")
    (tmp_path / "empty.csv").write_text('text,labels\nsome text,a\n"  ",b\n')
    with pytest.raises(ValueError, match=r"empty\.csv: 1 empty text.*line\(s\) 3"):
        read_text_csv(tmp_path / "empty.csv", label_column="labels")
    (tmp_path / "test.csv").write_text("text,labels\nsome text,grain\nother text,grain;gold\n")
    with pytest.raises(ValueError, match=r"test\.csv, line 3: label 'gold' is not one of the 3 classes"):
        read_text_csv(tmp_path / "test.csv", label_column="labels", classes=CLASSES)
    (tmp_path / "cols.csv").write_text("text,grain,gold\nsome text,1,0\n")
    with pytest.raises(ValueError, match=r"missing \['money', 'oil'\], extra \['gold'\]"):
        read_text_csv(tmp_path / "cols.csv", classes=CLASSES)
    (tmp_path / "ragged.csv").write_text("text,labels\nsome text,a,b\n")
    with pytest.raises(ValueError, match=r"ragged\.csv, line 2: expected 2 fields"):
        read_text_csv(tmp_path / "ragged.csv", label_column="labels")


def _text_cfg(tmp_path: Path, train: Path, test: Path, *extra: str):
    return load_config(None, ["data.dataset=text-csv", f"data.train_ann={train}", f"data.test_ann={test}",
                              f"run.out_dir={tmp_path / 'run'}", *extra])


def test_build_data_text_csv(tmp_path):
    train = _write_text_csv(tmp_path / "train.csv", _docs(40, seed=0), "list")
    test = _write_text_csv(tmp_path / "test.csv", _docs(10, seed=1), "list")
    data = build_data(_text_cfg(tmp_path, train, test, "data.label_column=topics", "data.val_size=8"))
    assert (len(data.train), len(data.val), len(data.test)) == (32, 8, 10)
    assert data.class_names == CLASSES and data.input_type == "features"
    for ds in (data.train, data.val, data.test):
        assert scipy.sparse.issparse(ds.features) and ds.features.shape[1] == data.in_features
    # TF-IDF is fitted on the 32 kept documents: the own word ("doc<i>") of each held-out one is not a feature
    assert data.in_features == len(set(" ".join(WORDS.values()).split()) | {"the", "market", "said", "today"}) + \
        len({f"doc{i}" for i in range(40)}) - 8


def test_text_csv_class_without_training_positive(tmp_path):
    docs = _docs(10, seed=2)
    train = _write_text_csv(tmp_path / "train.csv", docs, "columns", classes=CLASSES + ["gold"])  # gold: all 0
    test = _write_text_csv(tmp_path / "test.csv", docs, "columns", classes=CLASSES + ["gold"])
    with pytest.raises(ValueError, match=r"1 class\(es\) have no positive in the training split of .*train\.csv: "
                                         r"'gold'"):
        build_data(_text_cfg(tmp_path, train, test))


# --------------------------------------------------------------------------- end to end

E2E = ["model.neck_dim=0", "schedule.epochs=2", "run.device=cpu", "data.workers=0", "run.tensorboard=false", "optim.batch_size=16", "schedule.warmup_iters=0",
       "sampler.name=random", "loss.name=bce", "optim.lr=1.0", "schedule.lr_steps=[]"]  # lr and schedule as the Reuters recipes


def _check_run(out: Path, res: dict, chance: float) -> None:
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["mAP"]["total"] == pytest.approx(res["mAP"]["total"])
    assert res["mAP"]["total"] > chance + 0.2, (res["mAP"]["total"], chance)


def test_train_text_csv_end_to_end(tmp_path):
    from dbloss.training.engine import train

    test_docs = _docs(30, seed=1)
    train_f = _write_text_csv(tmp_path / "train.csv", _docs(60, seed=0), "list")
    test_f = _write_text_csv(tmp_path / "test.csv", test_docs, "list")
    res = train(_text_cfg(tmp_path, train_f, test_f, "data.label_column=topics", *E2E), progress=False)
    prevalence = np.mean([[c in ls for c in CLASSES] for _, ls in test_docs])  # the mAP of random scores
    _check_run(tmp_path / "run", res, float(prevalence))


def test_train_sparse_features_end_to_end(tmp_path):
    from dbloss.training.engine import train

    for split, n, seed in (("train", 80, 0), ("test", 40, 1)):
        x, y = _sparse_set(n, 30, seed)
        scipy.sparse.save_npz(tmp_path / f"{split}.npz", x)
        _write_labels(tmp_path / f"{split}_labels.csv", y, "csv")
    res = train(load_config(None, ["data.dataset=features", f"data.train_ann={tmp_path / 'train.npz'}",
                                   f"data.test_ann={tmp_path / 'test.npz'}", f"run.out_dir={tmp_path / 'run'}", *E2E]),
                progress=False)
    _check_run(tmp_path / "run", res, float(y.mean()))
