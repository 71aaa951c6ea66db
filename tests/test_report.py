"""Tests of dbloss.apps.report: run folders -> Markdown table, figures, self-contained HTML."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from dbloss.apps.report import load_runs, results_table, select_increment_pair, write_report
from dbloss.stats import GROUPS, LabelStats, class_split

FREQ = np.array([400, 150, 120, 60, 30, 25, 12, 8, 5, 3])
NAMES = [f"cls{k}" for k in range(len(FREQ))]
SPLIT = class_split(FREQ)

RUNS = {  # name: (loss, sampler, per-class AP)
    "bce": ("bce", "random", [0.91, 0.82, 0.80, 0.55, 0.41, 0.47, 0.22, None, 0.15, 0.08]),
    "rs": ("bce", "class-aware", [0.90, 0.80, 0.81, 0.60, 0.50, 0.52, 0.35, 0.30, 0.28, 0.21]),
    "db-focal": ("db-focal", "class-aware", [0.92, 0.84, 0.80, 0.66, 0.58, 0.61, 0.49, 0.40, 0.37, 0.33]),
}


def _group_map(ap):
    a = np.array([np.nan if v is None else v for v in ap], dtype=float)
    return {"total": float(np.nanmean(a)), **{g: float(np.nanmean(a[SPLIT[g]])) for g in GROUPS}}


def _metrics(name):
    loss, sampler, ap = RUNS[name]
    return {
        "name": name, "loss": loss, "sampler": sampler, "dataset": "toy",
        "mAP": _group_map(ap), "micro_f1": 0.6123, "macro_f1": 0.45678, "threshold": 0.5,
        "per_class_ap": ap, "class_names": NAMES, "train_class_freq": FREQ.tolist(),
        "split": SPLIT, "epochs": 8, "seed": 0,
    }


@pytest.fixture
def run_dirs(tmp_path):
    dirs = []
    for name in RUNS:
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(_metrics(name)))
        dirs.append(d)
    # one run carries its label statistics with custom thresholds
    labels = np.zeros((10, len(FREQ)), dtype=int)
    LabelStats.from_labels(labels, NAMES, head_min=100, tail_max=20).save(dirs[0] / "label_stats.json")
    return dirs


def test_load_runs_reads_metrics_and_names_bad_folders(run_dirs, tmp_path):
    runs = load_runs(run_dirs)
    assert [r["name"] for r in runs] == list(RUNS)
    assert runs[0]["run_dir"] == str(run_dirs[0]) and runs[0]["head_min"] == 100
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run"):
        load_runs([run_dirs[0], empty])
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        load_runs([tmp_path / "no_such_run"])
    bad = tmp_path / "corrupt_run"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"name": "x", "loss": ')
    with pytest.raises(ValueError, match="corrupt_run.*not valid JSON"):
        load_runs([bad])
    (bad / "metrics.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match=r"corrupt_run.*\['loss', 'sampler', 'mAP'\]"):
        load_runs([bad])
    m = _metrics("rs")
    m["per_class_ap"] = m["per_class_ap"][:3]
    (bad / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="corrupt_run.*per_class_ap.*10 values"):
        load_runs([bad])


def test_results_table_values(run_dirs):
    table = results_table(load_runs(run_dirs))
    lines = table.splitlines()
    assert lines[0] == "| Run | Loss | Sampler | mAP | Head | Medium | Tail | Micro-F1 | Macro-F1 |"
    assert len(lines) == 2 + len(RUNS)
    for line, name in zip(lines[2:], RUNS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        loss, sampler, ap = RUNS[name]
        expect = _group_map(ap)
        assert cells[:3] == [name, loss, sampler]
        assert cells[3:7] == [f"{100 * expect[k]:.2f}" for k in ("total", *GROUPS)]
        assert cells[7:] == ["61.23", "45.68"]
    # hand-checked value: db-focal head mAP = mean(0.92, 0.84, 0.80) = 85.33
    assert "| db-focal | db-focal | class-aware | " in table and "| 85.33 |" in lines[4]


def test_results_table_missing_values_and_pipes():
    t = results_table([{"name": "a|b", "loss": "bce", "sampler": "random", "mAP": {"total": None}}])
    row = t.splitlines()[2]
    assert row.startswith("| a\\|b | bce | random | – |") and row.count("–") == 6


def test_select_increment_pair_defaults_and_overrides(run_dirs):
    runs = load_runs(run_dirs)
    cmp_run, base = select_increment_pair(runs)
    assert (cmp_run["name"], base["name"]) == ("db-focal", "rs")
    cmp_run, base = select_increment_pair(runs, baseline="bce")
    assert (cmp_run["name"], base["name"]) == ("db-focal", "bce")
    cmp_run, base = select_increment_pair(runs, baseline=str(run_dirs[0]), compare="rs")
    assert (cmp_run["name"], base["name"]) == ("rs", "bce")
    with pytest.raises(ValueError, match="nope"):
        select_increment_pair(runs, baseline="nope")
    assert isinstance(select_increment_pair(runs[:1]), str)


def test_write_report_markdown_and_figures(run_dirs, tmp_path):
    out = tmp_path / "report"
    paths = write_report(run_dirs, out)
    assert set(paths) == {"markdown", "html", "class_distribution", "per_class_ap", "ap_increment"}
    md = paths["markdown"].read_text()
    assert results_table(load_runs(run_dirs)) in md
    for key in ("class_distribution", "per_class_ap", "ap_increment"):
        assert paths[key].parent == out and paths[key].read_bytes()[:4] == b"\x89PNG"
        assert f"]({paths[key].name})" in md
    assert "increment of db-focal over rs" in md


def test_write_report_skips_increment_without_rs(run_dirs, tmp_path):
    paths = write_report([run_dirs[0], run_dirs[2]], tmp_path / "r")  # bce (random) + db-focal
    assert "ap_increment" not in paths
    assert "AP-increment figure skipped: no RS baseline" in paths["markdown"].read_text()
    assert "AP-increment figure skipped" in paths["html"].read_text()


def _html_images(text):
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)


def test_write_report_html_is_self_contained(run_dirs, tmp_path):
    paths = write_report(run_dirs, tmp_path / "r")
    text = paths["html"].read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert not re.search(r"<(script|link)\b", text, re.I)
    assert "@import" not in text and "url(" not in text
    imgs = _html_images(text)
    assert len(imgs) == 3
    for b64 in imgs:
        assert base64.b64decode(b64)[:4] == b"\x89PNG"
    for name in RUNS:
        assert f"<td>{name}</td>" in text
    assert '<td class="num">85.33</td>' in text


_CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
]


def _chromium(args, tmp_path, tag):
    exe = shutil.which("chromium")
    assert exe is not None
    cmd = [exe, *_CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / ('profile-' + tag)}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_report_html_in_headless_chromium(run_dirs, tmp_path):
    paths = write_report(run_dirs, tmp_path / "r")
    html_path = paths["html"]
    # A copy with a probe script (the report itself has no JS) records, after the load event,
    # each image's decoded width and the table rows, so that the dumped DOM shows what rendered.
    probe = html_path.with_name("probe.html")
    probe.write_text(html_path.read_text().replace(
        "</body>",
        "<script>window.addEventListener('load', () => {"
        "document.body.dataset.imgs = Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1).join(',');"
        "document.body.dataset.rows = document.querySelectorAll('tbody tr').length;});</script></body>",
    ))
    res = _chromium(["--dump-dom", probe.as_uri()], tmp_path, "probe")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    m = re.search(r'data-imgs="([^"]*)"', dom)
    assert m, f"probe did not run; DOM starts with {dom[:300]!r}"
    widths = [int(w) for w in m.group(1).split(",")]
    assert len(widths) == 3 and all(w > 300 for w in widths), widths
    assert f'data-rows="{len(RUNS)}"' in dom

    # The report itself: DOM has the table rows and images, the console has no errors about it.
    res = _chromium(["--dump-dom", html_path.as_uri()], tmp_path, "dom")
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    for name in RUNS:
        assert re.search(rf"<tr><td>{re.escape(name)}</td>", dom)
    assert len(_html_images(dom)) == 3
    page_errors = [
        line for line in res.stderr.splitlines()
        if (html_path.name in line or "CONSOLE" in line)
        and re.search(r"Uncaught|ERROR|Error|Failed to load|net::ERR|Not allowed", line)
    ]
    assert not page_errors, page_errors

    shot = tmp_path / "report.png"
    res = _chromium(["--window-size=1280,2400", f"--screenshot={shot}", html_path.as_uri()], tmp_path, "shot")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000


SEEDS = (0, 1, 2)
SEED_SHIFT = {0: -0.06, 1: 0.0, 2: 0.09}  # each seed's per-class AP and F1 move by this much


def _seed_metrics(name, seed):
    m = _metrics(name)
    m["per_class_ap"] = [None if v is None else min(1.0, v + SEED_SHIFT[seed]) for v in m["per_class_ap"]]
    m.update(mAP=_group_map(m["per_class_ap"]), micro_f1=0.6 + SEED_SHIFT[seed], macro_f1=0.4 + 2 * SEED_SHIFT[seed],
             seed=seed)
    return m


@pytest.fixture
def seed_rows(tmp_path):
    """``OUT/<row>/seed<s>/metrics.json`` as ``dbloss demo`` lays them out: each seed with other metrics."""
    for name in RUNS:
        for seed in SEEDS:
            d = tmp_path / "demo" / name / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps(_seed_metrics(name, seed)))
    return tmp_path / "demo"


def _mean_sd(values):
    v = np.array(values, dtype=float)
    return f"{100 * v.mean():.2f} ± {100 * v.std(ddof=1):.2f}"


def test_report_rows_over_seeds_show_mean_and_sd_of_every_seed(seed_rows, tmp_path):
    paths = write_report([seed_rows / name for name in RUNS], tmp_path / "r")  # folders of seed<k>/ runs
    md, text = paths["markdown"].read_text(), paths["html"].read_text()
    for name in RUNS:
        ms = [_seed_metrics(name, s) for s in SEEDS]
        expect = [_mean_sd([m["mAP"]["total"] for m in ms]), *(_mean_sd([m["mAP"][g] for m in ms]) for g in GROUPS),
                  _mean_sd([m["micro_f1"] for m in ms]), _mean_sd([m["macro_f1"] for m in ms])]
        loss, sampler, _ = RUNS[name]
        assert f"| {name} | {loss} | {sampler} | " + " | ".join(expect) + " |" in md
        assert f"<td>{name}</td><td>{loss}</td><td>{sampler}</td>" + "".join(
            f'<td class="num">{c}</td>' for c in expect) in text
        seed0 = f"{100 * ms[0]['mAP']['total']:.2f}"
        assert f"| {name} | {loss} | {sampler} | {seed0} |" not in md  # not the first seed alone
        assert f"seeds 0, 1, 2: `{seed_rows / name / 'seed0'}`" in md
    assert "mean ± sample standard deviation over the seeds" in md and "over the seeds" in text
    assert "(mean over its seeds)" in md and "increment of db-focal over rs (means over seeds)" in md
    # a list of run folders per row is the same row; so is the per-class AP the figures plot: the mean
    lists = write_report([[seed_rows / name / f"seed{s}" for s in SEEDS] for name in RUNS], tmp_path / "r2")
    table = md.split("\n\n")[2]
    assert table.startswith("| Run |") and table in lists["markdown"].read_text()


def test_load_rows_means_per_class_ap_and_rejects_mixed_rows(seed_rows, tmp_path):
    from dbloss.apps.report import load_rows

    (row,) = load_rows([seed_rows / "rs"])
    assert row["seeds"] == list(SEEDS) and len(row["runs"]) == 3 and row["run_dir"] == str(seed_rows / "rs")
    expect = np.mean([_seed_metrics("rs", s)["per_class_ap"] for s in SEEDS], axis=0)
    np.testing.assert_allclose(row["per_class_ap"], expect)
    assert row["class_names"] == NAMES and row["train_class_freq"] == FREQ.tolist()
    (single,) = load_rows([seed_rows / "rs" / "seed1"])  # one run: its own values, no sd
    assert single["mean"]["total"] == _seed_metrics("rs", 1)["mAP"]["total"] and np.isnan(single["sd"]["total"])
    with pytest.raises(ValueError, match="share `name`"):
        load_rows([[seed_rows / "rs" / "seed0", seed_rows / "bce" / "seed1"]])
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_rows([tmp_path])  # neither a run nor a folder of seed runs
