"""dbloss.data.download against a local HTTP server on the loopback interface (no network)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from dbloss.data import download as dl
from dbloss.data.download import Archive, DownloadError, download_archive, download_dataset, download_file, safe_extract


class _Server:
    """Serves ``files`` (name -> bytes) with HTTP range support and scripted misbehaviour."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.fail: list[int] = []  # status codes to answer, one per request, before serving
        self.cut_after: int | None = None  # send only this many bytes of the next body, then close
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                name = self.path.lstrip("/").split("/")[-1]
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if server.fail:
                    self.send_error(server.fail.pop(0))
                    return
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                start = int(rng.split("=")[1].split("-")[0]) if rng and not server.ignore_range else 0
                if start >= len(body) and rng:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if server.cut_after is not None:
                    chunk, server.cut_after = chunk[: server.cut_after], None
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


FAST = dict(retries=3, backoff=0.01, timeout=5.0)


def test_interrupted_download_is_resumed_with_a_range_request(server: _Server, tmp_path: Path) -> None:
    body = bytes(range(256)) * 4000  # ~1 MB
    server.files["a.bin"] = body
    server.cut_after = 300_000  # the first answer stops short
    out = download_file(f"{server.url}/a.bin", tmp_path / "a.bin", progress=False, **FAST)
    assert out.read_bytes() == body
    assert [r for _, r in server.requests] == [None, "bytes=300000-"]
    assert not (tmp_path / "a.bin.part").exists()


def test_a_part_file_from_an_earlier_call_is_resumed(server: _Server, tmp_path: Path) -> None:
    body = b"x" * 5000 + b"y" * 5000
    server.files["a.bin"] = body
    (tmp_path / "a.bin.part").write_bytes(body[:5000])
    download_file(f"{server.url}/a.bin", tmp_path / "a.bin", progress=False, **FAST)
    assert (tmp_path / "a.bin").read_bytes() == body
    assert server.requests == [("/a.bin", "bytes=5000-")]


def test_a_server_that_ignores_ranges_restarts_the_file(server: _Server, tmp_path: Path) -> None:
    body = b"abc" * 1000
    server.files["a.bin"] = body
    server.ignore_range = True
    (tmp_path / "a.bin.part").write_bytes(b"zzz" * 10)
    download_file(f"{server.url}/a.bin", tmp_path / "a.bin", progress=False, **FAST)
    assert (tmp_path / "a.bin").read_bytes() == body


def test_503_is_retried_with_backoff_then_succeeds(server: _Server, tmp_path: Path) -> None:
    server.files["a.bin"] = b"ok"
    server.fail = [503, 503]
    waits: list[float] = []
    download_file(f"{server.url}/a.bin", tmp_path / "a.bin", progress=False, retries=3, backoff=0.5,
                  sleep=waits.append)
    assert (tmp_path / "a.bin").read_bytes() == b"ok"
    assert waits == [0.5, 1.0]  # exponential back-off


def test_a_server_that_keeps_refusing_gives_a_clear_error(server: _Server, tmp_path: Path) -> None:
    server.fail = [503] * 10
    with pytest.raises(DownloadError, match=r"a\.bin: still failing after 2 retries \(HTTP 503.*--mirror"):
        download_file(f"{server.url}/a.bin", tmp_path / "a.bin", progress=False, retries=2, backoff=0.0)
    assert len(server.requests) == 3
    assert not (tmp_path / "a.bin").exists()


def test_404_is_not_retried_and_names_the_url_and_the_mirror(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"/missing\.tar: the server answered 404.*--mirror URL.*DBLOSS_MIRROR"):
        download_file(f"{server.url}/missing.tar", tmp_path / "missing.tar", progress=False, **FAST)
    assert len(server.requests) == 1


def test_wrong_checksum_is_refused_before_extraction(server: _Server, tmp_path: Path) -> None:
    """The spec's published MD5 does not match a fake archive served under its name."""
    server.files["VOCtrainval_11-May-2012.tar"] = _tar({"VOCdevkit/VOC2012/x.txt": b"fake"})
    with pytest.raises(ValueError, match=r"MD5 mismatch: expected 6cd6e144f989b92b3379bac3b3de84fd"):
        download_dataset("voc2012", tmp_path, mirror=server.url, progress=False, **FAST)
    assert not (tmp_path / "VOCdevkit").exists()
    assert (tmp_path / "VOCtrainval_11-May-2012.tar.corrupt").exists()
    assert not (tmp_path / ".dbloss").exists()


def test_mirror_from_the_environment(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dl.MIRROR_ENV, server.url + "/pascal/")
    with pytest.raises(DownloadError, match="404"):
        download_dataset("voc2007", tmp_path, progress=False, **FAST)
    assert server.requests[0][0] == "/pascal/VOCtrainval_06-Nov-2007.tar"


def test_dataset_layout_idempotent_and_no_network_the_second_time(server: _Server, tmp_path: Path) -> None:
    """Two VOC-style archives merge into one tree; a second call fetches nothing."""
    trainval = _tar({"VOCdevkit/VOC2007/ImageSets/Main/trainval.txt": b"000005\n",
                     "VOCdevkit/VOC2007/JPEGImages/000005.jpg": b"jpg5"})
    test = _tar({"VOCdevkit/VOC2007/ImageSets/Main/test.txt": b"000001\n",
                 "VOCdevkit/VOC2007/JPEGImages/000001.jpg": b"jpg1"})
    server.files.update({"trainval.tar": trainval, "test.tar": test})
    archives = [Archive("trainval.tar", f"{server.url}/trainval.tar", _md5(trainval)),
                Archive("test.tar", f"{server.url}/test.tar", _md5(test))]
    root = download_dataset("voc2007", tmp_path, archives=archives, progress=False, **FAST)
    assert root == tmp_path / "VOCdevkit"
    assert sorted(p.name for p in (root / "VOC2007" / "JPEGImages").iterdir()) == ["000001.jpg", "000005.jpg"]
    assert (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_bytes() == b"000001\n"
    assert not (tmp_path / "trainval.tar").exists()  # archives are deleted by default
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".extract-")]
    n = len(server.requests)
    download_dataset("voc2007", tmp_path, archives=archives, progress=False, **FAST)
    assert len(server.requests) == n


def test_a_killed_extraction_is_redone(server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _zip({"train2017/1.jpg": b"one", "train2017/2.jpg": b"two"})
    server.files["train2017.zip"] = data
    archive = Archive("train2017.zip", f"{server.url}/train2017.zip", _md5(data), "coco")

    def killed(src: Path, dst: Path) -> None:
        raise KeyboardInterrupt  # the process dies while moving the tree into place

    monkeypatch.setattr(dl, "_merge", killed)
    with pytest.raises(KeyboardInterrupt):
        download_archive(archive, tmp_path, progress=False, **FAST)
    assert not (tmp_path / ".dbloss" / "train2017.zip.done").exists()  # nothing looks done
    assert not (tmp_path / "coco" / "train2017").exists()
    monkeypatch.undo()
    assert download_archive(archive, tmp_path, progress=False, **FAST) is True
    assert (tmp_path / "coco" / "train2017" / "2.jpg").read_bytes() == b"two"
    assert len(server.requests) == 1  # the verified archive of the first call was reused
    assert download_archive(archive, tmp_path, progress=False, **FAST) is False


@pytest.mark.parametrize("kind", ["tar", "zip"])
@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/dbloss-evil.txt"])
def test_members_that_escape_are_refused_and_nothing_is_written(tmp_path: Path, kind: str, name: str) -> None:
    members = {"good/a.txt": b"a", name: b"evil"}
    archive = tmp_path / f"x.{kind}"
    archive.write_bytes(_tar(members) if kind == "tar" else _zip(members))
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match=r"refusing to extract anything: member .*evil\.txt"):
        safe_extract(archive, dest)
    assert not dest.exists() or not any(dest.rglob("*"))
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/dbloss-evil.txt").exists()


def test_a_symlink_out_of_the_destination_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("data/link")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        t.addfile(info)
    (tmp_path / "x.tar").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=r"member 'data/link': its link target .* leaves the destination"):
        safe_extract(tmp_path / "x.tar", tmp_path / "dest")


def test_corrupt_archives_are_named(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"this is not an archive" * 100)
    with pytest.raises(ValueError, match=r"junk\.tar: not a readable tar or zip archive"):
        safe_extract(tmp_path / "junk.tar", tmp_path / "dest")
    good = _zip({"a/b.txt": b"hello" * 1000})
    broken = bytearray(good)
    broken[40:60] = b"\0" * 20  # damage the member's data, keep the directory readable
    (tmp_path / "broken.zip").write_bytes(bytes(broken))
    with pytest.raises(ValueError, match=r"broken\.zip: corrupt archive"):
        safe_extract(tmp_path / "broken.zip", tmp_path / "dest2")
    assert not (tmp_path / "dest2" / "a").exists()


def test_published_id_list_is_fetched_with_the_images(server: _Server, tmp_path: Path, voc_coco_mlt_dir: Path) -> None:
    """voc2012 fetches the VOC-MLT list from the mirror and verifies its published checksum; the
    generic downloader alone fetches images only."""
    from dbloss.data.published import PUBLISHED_SUBSETS, download_with_subset, load_id_list

    ids = (voc_coco_mlt_dir / "voc_mlt_train_labels.csv").read_text().splitlines()[1:]
    ids = [line.split(",")[0] for line in ids]
    server.files[PUBLISHED_SUBSETS["voc-mlt"].filename] = ("\n".join(ids) + "\n").encode()
    data = _tar({"VOCdevkit/VOC2012/ImageSets/Main/trainval.txt": b"x\n"})
    server.files["t.tar"] = data
    archives = [Archive("t.tar", "unused", _md5(data))]
    download_dataset("voc2012", tmp_path / "images_only", mirror=server.url, progress=False, archives=archives,
                     **FAST)
    assert [p for p, _ in server.requests] == ["/t.tar"] and not (tmp_path / "images_only" / "published").exists()
    root = download_with_subset("voc2012", tmp_path, mirror=server.url, progress=False, archives=archives, **FAST)
    assert root == tmp_path / "VOCdevkit" and (root / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").is_file()
    assert server.requests[-1][0] == "/" + PUBLISHED_SUBSETS["voc-mlt"].filename
    assert len(load_id_list(tmp_path / "published" / "voc_mlt_img_id.txt")) == 1142
    n = len(server.requests)
    download_with_subset("voc2012", tmp_path, mirror=server.url, progress=False, archives=archives, **FAST)
    assert len(server.requests) == n  # everything in place: nothing fetched


def test_unknown_dataset() -> None:
    with pytest.raises(ValueError, match=r"among \['coco2017', 'voc2007', 'voc2012'\] or a benchmark.*'voc2010'"):
        download_dataset("voc2010")


def test_a_benchmark_name_downloads_all_its_data_sets(server: _Server, tmp_path: Path) -> None:
    """voc-mlt = VOC 2012 trainval, then VOC 2007 (trainval + test), through the CLI."""
    from dbloss.cli import main

    with pytest.raises(SystemExit):  # argparse: an unknown name
        main(["data", "download", "lvis"])
    assert main(["data", "download", "voc-mlt", "--dest", str(tmp_path), "--mirror", server.url, "--no-subset",
                 "--no-progress"]) == 2  # the mirror has none of the files: a clear error, exit 2
    assert [p for p, _ in server.requests] == ["/VOCtrainval_11-May-2012.tar"]  # 404: not retried
    fetched: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dl, "download_archive", lambda archive, dest, **kw: fetched.append(archive.filename))
        root = download_dataset("voc-mlt", tmp_path)
    assert fetched == ["VOCtrainval_11-May-2012.tar", "VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"]
    assert root == tmp_path / "VOCdevkit"
