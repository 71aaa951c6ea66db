"""Download and unpack the paper's image data sets: VOC 2007, VOC 2012 and COCO 2017.

``download_dataset("voc2012", "data")`` leaves ``data/VOCdevkit/VOC2012/``: the layout the shipped
recipes read (``data_root: data/VOCdevkit``). COCO 2017 goes to ``data/coco/{train2017,val2017,annotations}``.
This module is the generic downloader and knows no long-tailed subset: the published VOC-MLT /
COCO-MLT id lists (``subset: data/published/...``) are fetched with their images by
:func:`dbloss.data.published.download_with_subset`, what ``dbloss data download`` calls.

Each archive is

* downloaded with HTTP range requests into ``<name>.part``, so an interrupted download resumes
  where it stopped; transient failures (connection errors, time-outs, 5xx and 429 answers) are
  retried with exponential back-off; a refusal (404, 403, 410) stops at once with a message
  that names the URL and ``--mirror`` / ``$DBLOSS_MIRROR`` (the official VOC host is often down);
* checked against its published MD5 before anything is extracted (a mismatch is refused and
  the file moved aside to ``<name>.corrupt``);
* extracted safely (no member may be absolute, contain ``..`` or link outside the destination:
  the whole archive is refused before a byte is written), into a staging folder that is then
  moved into place, and marked done in ``<dest>/.dbloss/<name>.done`` only after the move: a
  killed extraction leaves no marker and is redone by the next call, and a call whose archives
  are all marked does nothing (no network).

A mirror serves every file under its own name: ``--mirror https://host/path`` fetches
``https://host/path/VOCtrainval_11-May-2012.tar`` (:func:`mirror_url`; the id lists by their names too).

Checksums and where they come from: the VOC values are those of torchvision
(``torchvision/datasets/voc.py``, ``DATASET_YEAR_DICT``); the COCO site publishes none, so the
COCO values are the ones used by PaddleDetection (``ppdet/utils/download.py``) and other public
download scripts, which agree.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import tarfile
import time
import zlib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from dbloss.files import write_json

__all__ = [
    "BENCHMARK_DATA",
    "DATASETS",
    "MIRROR_ENV",
    "Archive",
    "DatasetSpec",
    "DownloadError",
    "download_archive",
    "download_dataset",
    "download_file",
    "md5sum",
    "mirror_url",
    "resolve_mirror",
    "safe_extract",
]

log = logging.getLogger(__name__)

#: Environment variable with a mirror URL, used when ``mirror`` is not given.
MIRROR_ENV = "DBLOSS_MIRROR"

_REFUSED = (401, 403, 404, 410)  # answers that retrying does not change


class DownloadError(ConnectionError):
    """A download failed for good (refused, or still failing after the retries); the message says why."""


@dataclass(frozen=True)
class Archive:
    """One archive of a data set.

    Attributes:
        filename: the archive's file name (also its name on a mirror).
        url: the official URL.
        md5: the published MD5 of the archive (hex).
        extract_to: the folder, relative to the destination, the archive is unpacked into.
    """

    filename: str
    url: str
    md5: str
    extract_to: str = "."


@dataclass(frozen=True)
class DatasetSpec:
    """A data set: its archives and the ``data_root`` it yields (the published id list that goes with it:
    :data:`dbloss.data.published.DATASET_SUBSETS`)."""

    archives: tuple[Archive, ...]
    data_root: str
    description: str = ""


_VOC = "https://thor.robots.ox.ac.uk/pascal/VOC/"
_COCO = "http://images.cocodataset.org/"

#: name -> :class:`DatasetSpec` for ``dbloss data download``.
DATASETS: dict[str, DatasetSpec] = {
    "voc2007": DatasetSpec(
        archives=(
            Archive("VOCtrainval_06-Nov-2007.tar", _VOC + "voc2007/VOCtrainval_06-Nov-2007.tar",
                    "c52e279531787c972589f7e41ab4ae64"),
            Archive("VOCtest_06-Nov-2007.tar", _VOC + "voc2007/VOCtest_06-Nov-2007.tar",
                    "b6e924de25625d8de591ea690078ad9f"),
        ),
        data_root="VOCdevkit",
        description="VOC 2007 trainval + test (VOC-MLT is tested on VOC2007 test); 0.9 GB",
    ),
    "voc2012": DatasetSpec(
        archives=(
            Archive("VOCtrainval_11-May-2012.tar", _VOC + "voc2012/VOCtrainval_11-May-2012.tar",
                    "6cd6e144f989b92b3379bac3b3de84fd"),
        ),
        data_root="VOCdevkit",
        description="VOC 2012 trainval (VOC-MLT's training images) and the VOC-MLT id list; 2 GB",
    ),
    "coco2017": DatasetSpec(
        archives=(
            Archive("annotations_trainval2017.zip", _COCO + "annotations/annotations_trainval2017.zip",
                    "f4bbac642086de4f52a3fdda2de5fa2c", "coco"),
            Archive("val2017.zip", _COCO + "zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", "coco"),
            Archive("train2017.zip", _COCO + "zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", "coco"),
        ),
        data_root="coco",
        description="COCO 2017 train + val images and annotations and the COCO-MLT id list; 19 GB",
    ),
}


#: A benchmark's data in one call: its data sets, in order.
BENCHMARK_DATA: dict[str, tuple[str, ...]] = {"voc-mlt": ("voc2012", "voc2007"), "coco-mlt": ("coco2017",)}


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex MD5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _mirror_hint() -> str:
    return f"pass --mirror URL (or set ${MIRROR_ENV}) to download from a mirror that serves the same file names"


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": "dbloss"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _content_start(response: http.client.HTTPResponse, offset: int) -> int:
    """Where the body starts in the file: ``offset`` for a matching 206, 0 when the server sent it all."""
    if response.status != 206:
        return 0
    content_range = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        start = int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        raise DownloadError(f"{response.url}: unreadable Content-Range {content_range!r} in a partial answer") from None
    if start != offset:
        raise DownloadError(f"{response.url}: asked for bytes from {offset}, but the server sent from {start}")
    return start


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (restarting it when the server ignores the range)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send: the part file is complete
            return
        raise
    with response:
        start = _content_start(response, offset)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        from tqdm import tqdm

        with open(part, "r+b" if start else "wb") as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
            disable=not progress, leave=False, dynamic_ncols=True,
        ) as bar:
            f.seek(start)
            f.truncate()
            while block := response.read(1 << 20):
                f.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def download_file(
    url: str,
    path: str | Path,
    *,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download ``url`` to ``path``, resuming ``<path>.part`` with HTTP range requests.

    Transient failures (connection errors, time-outs, a body cut short, 5xx and 429 answers) are
    retried up to ``retries`` times, waiting ``backoff * 2**attempt`` seconds; the part file is
    kept, so each try (and a later call) resumes it. ``path`` appears only when the download is
    complete.

    Raises:
        DownloadError: the server refused (401, 403, 404, 410), or the retries ran out; the
            message names the URL, the last reason and how to use a mirror.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            part.replace(path)
            return path
        except urllib.error.HTTPError as e:
            if e.code in _REFUSED:
                raise DownloadError(f"{url}: the server answered {e.code} {e.reason}; {_mirror_hint()}") from None
            reason = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError,
                ConnectionError) as e:
            reason = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if attempt < retries:
            wait = backoff * 2 ** attempt
            log.warning("%s: %s; retrying in %.1f s (%d of %d)", url, reason, wait, attempt + 1, retries)
            sleep(wait)
    have = part.stat().st_size if part.exists() else 0
    raise DownloadError(f"{url}: still failing after {retries} retries ({reason}); {have} bytes are kept in "
                        f"{part} and the next call resumes them; {_mirror_hint()}")


def _member_problem(name: str, link: str | None = None) -> str | None:
    """Why an archive member (its path, or the target of its link) may not be extracted, or None."""
    for what, value in (("path", name), ("link target", link)):
        if value is None:
            continue
        p = PurePosixPath(value.replace("\\", "/"))
        if value.startswith(("/", "\\")) or (p.parts and ":" in p.parts[0]):
            return f"its {what} {value!r} is absolute"
        if ".." in p.parts:
            return f"its {what} {value!r} leaves the destination"
    return None


def _check_members(archive: Path) -> str:
    """Refuse an archive any of whose members would escape the destination; return its kind."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                problems = [(i.filename, _member_problem(i.filename)) for i in z.infolist()]
            kind = "zip"
        else:
            with tarfile.open(archive) as t:
                problems = []
                for m in t:
                    link = m.linkname if (m.issym() or m.islnk()) else None
                    if link is not None and m.issym():  # a relative symlink is resolved from its folder
                        link = str(PurePosixPath(m.name).parent / link)
                    bad = _member_problem(m.name, link)
                    if bad is None and not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                        bad = "it is a device or other special file"
                    problems.append((m.name, bad))
            kind = "tar"
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"{archive}: not a readable tar or zip archive ({e})") from None
    for name, bad in problems:
        if bad:
            raise ValueError(f"{archive}: refusing to extract anything: member {name!r}: {bad}")
    return kind


def _merge(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into ``dst``: whole folders by one rename where ``dst`` lacks them."""
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir() and not item.is_symlink() and target.is_dir():
            _merge(item, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a tar or zip archive into ``dest`` safely and all at once.

    Every member is checked first (no absolute path, no ``..``, no link out, no device file):
    one bad member refuses the whole archive, before anything is written. The archive is
    unpacked into a staging folder beside ``dest`` and then moved in, so ``dest`` never holds a
    partial copy of one member. Raises ``ValueError`` naming the archive and the member.
    """
    archive, dest = Path(archive), Path(dest)
    kind = _check_members(archive)
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".extract-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                z.extractall(staging)
        else:
            with tarfile.open(archive) as t:
                t.extractall(staging, filter="data")
        _merge(staging, dest)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{archive}: corrupt archive ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _marker(dest: Path, archive: Archive) -> Path:
    return dest / ".dbloss" / f"{archive.filename}.done"


def mirror_url(filename: str, url: str, mirror: str | None) -> str:
    """Where to fetch ``filename``: its official ``url``, or ``MIRROR/filename`` when a ``mirror`` is given.

    >>> mirror_url("a.tar", "https://host/x/a.tar", None), mirror_url("a.tar", "https://host/x/a.tar", "http://m/")
    ('https://host/x/a.tar', 'http://m/a.tar')
    """
    return url if not mirror else mirror.rstrip("/") + "/" + filename


def resolve_mirror(mirror: str | None) -> str | None:
    """The mirror to use: ``mirror`` when given, else ``$DBLOSS_MIRROR`` (:data:`MIRROR_ENV`) when set, else None."""
    return mirror if mirror is not None else (os.environ.get(MIRROR_ENV) or None)


def download_archive(
    archive: Archive,
    dest: str | Path,
    *,
    mirror: str | None = None,
    keep_archive: bool = False,
    progress: bool = True,
    **download_kwargs: float,
) -> bool:
    """Download, verify and extract one archive into ``dest / archive.extract_to``.

    Returns False when it was already done (its marker exists: nothing is fetched), True when
    it was done now. The archive is kept in ``dest`` when ``keep_archive``, else deleted after
    extraction; a downloaded archive left by an earlier call is verified and reused.

    Raises ``ValueError`` when the MD5 does not match (the file is moved to ``<name>.corrupt``)
    or the archive is unsafe or corrupt, :class:`DownloadError` when it cannot be fetched.
    """
    dest = Path(dest)
    marker = _marker(dest, archive)
    if marker.exists():
        log.info("%s: already extracted (%s)", archive.filename, marker)
        return False
    path = dest / archive.filename
    if not path.exists():
        url = mirror_url(archive.filename, archive.url, mirror)
        log.info("downloading %s from %s", archive.filename, url)
        download_file(url, path, progress=progress, **download_kwargs)
    got = md5sum(path)
    if got != archive.md5:
        bad = path.with_name(path.name + ".corrupt")
        os.replace(path, bad)
        raise ValueError(f"{archive.filename}: MD5 mismatch: expected {archive.md5} (published), but got {got}; "
                         f"the file was moved to {bad} and nothing was extracted. Delete it and run again, or "
                         f"{_mirror_hint()}")
    log.info("extracting %s into %s", archive.filename, dest / archive.extract_to)
    safe_extract(path, dest / archive.extract_to)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"md5": archive.md5, "extract_to": archive.extract_to})  # atomic: done only once written
    if not keep_archive:
        path.unlink()
    return True


def download_dataset(
    name: str,
    dest: str | Path = "data",
    *,
    mirror: str | None = None,
    keep_archives: bool = False,
    progress: bool = True,
    archives: Sequence[Archive] | None = None,
    **download_kwargs: float,
) -> Path:
    """Download one of :data:`DATASETS` into ``dest`` in the layout the recipes read; return its ``data_root``.

    Args:
        name: "voc2007", "voc2012" or "coco2017", or a benchmark of :data:`BENCHMARK_DATA`
            ("voc-mlt": VOC 2012 trainval + VOC 2007 test + the VOC-MLT list; "coco-mlt": COCO 2017).
        dest: the data folder (default ``data``, the recipes' ``data/...`` paths).
        mirror: a URL prefix serving the same file names (default ``$DBLOSS_MIRROR``, else the
            official hosts).
        keep_archives: keep the archives after extraction (default: delete them).
        archives: replaces the spec's archives (for tests and private copies).

    The images and annotations only: :func:`dbloss.data.published.download_with_subset` adds the
    published id lists. A second call with everything in place does nothing.
    """
    if name in BENCHMARK_DATA and archives is None:
        roots = [download_dataset(part, dest, mirror=mirror, keep_archives=keep_archives, progress=progress,
                                  **download_kwargs) for part in BENCHMARK_DATA[name]]
        return roots[0]
    if name not in DATASETS:
        raise ValueError(f"Expected a data set among {sorted(DATASETS)} or a benchmark among "
                         f"{sorted(BENCHMARK_DATA)}, but got {name!r}")
    spec = DATASETS[name]
    dest = Path(dest)
    mirror = resolve_mirror(mirror)
    for archive in archives if archives is not None else spec.archives:
        download_archive(archive, dest, mirror=mirror, keep_archive=keep_archives, progress=progress,
                         **download_kwargs)
    return dest / spec.data_root
