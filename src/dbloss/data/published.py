"""The long-tailed subsets published with the original Distribution-Balanced loss work.

Wu et al. (ECCV 2020) released the image-id lists of VOC-MLT and COCO-MLT in
github.com/wutong16/DistributionBalancedLoss (``appendix/``). This module downloads (or copies)
them, checks them, and reads them; the lists are not shipped with dbloss.
:func:`download_with_subset` (``dbloss data download``) fetches a data set's images with
:mod:`dbloss.data.download`, the generic downloader, and then its published list.

Checksum: :data:`PUBLISHED_SUBSETS` gives the sha256 of the list in *canonical form*: the ids
joined with ``"\\n"`` plus a final ``"\\n"``. It was computed from the file text as stored by a
public-code index (LF line endings, a final newline; 13,704 and 13,023 characters), which equals
the id column of the label tables converted from the released pickles, id for id and in order.
Whether GitHub serves exactly those bytes could not be checked without network access, so the
check is made on the canonical form: a file that differs only in line endings, a missing final
newline or blank lines passes (logged), any other difference fails.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dbloss.data.download import (BENCHMARK_DATA, Archive, DownloadError, download_dataset, download_file,
                                  mirror_url, resolve_mirror)

__all__ = ["DATASET_SUBSETS", "PUBLISHED_SUBSETS", "PublishedSubset", "canonical_sha256", "download_with_subset",
           "fetch_published_subset", "load_id_list"]

log = logging.getLogger(__name__)

_RAW = "https://raw.githubusercontent.com/wutong16/DistributionBalancedLoss/master/"


@dataclass(frozen=True)
class PublishedSubset:
    """One published id list.

    Attributes:
        url: where to download it.
        filename: the file name written into ``dest_dir``.
        sha256: sha256 of the canonical text (ids joined by "\\n", plus a final "\\n"), or None to
            skip the hash check (the count is still checked).
        count: the number of ids.
        description: what the list is.
    """

    url: str
    filename: str
    sha256: str | None
    count: int
    description: str


#: name -> :class:`PublishedSubset`.
PUBLISHED_SUBSETS: dict[str, PublishedSubset] = {
    "voc-mlt": PublishedSubset(
        url=_RAW + "appendix/VOCdevkit/longtail2012/img_id.txt",
        filename="voc_mlt_img_id.txt",
        sha256="6e49185d5421236718f7393e952f5790e5c0cfeb1694892b1b971f59725d5ebc",
        count=1142,
        description="VOC-MLT training images: VOC2012 trainval image ids, one per line",
    ),
    "coco-mlt": PublishedSubset(
        # named .pkl upstream but plain text: one COCO 2017 train image id per line
        url=_RAW + "appendix/coco/longtail2017/img_id.pkl",
        filename="coco_mlt_img_id.txt",
        sha256="f31e853d2c7b69512c62b65ff1db067a49b3ab86a62f685c7da86b7c3dd04768",
        count=1909,
        description="COCO-MLT training images: COCO 2017 train image ids, one per line",
    ),
}


def _ids_from_text(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def canonical_sha256(ids: list[str]) -> str:
    """sha256 of ``"\\n".join(ids) + "\\n"`` (UTF-8): the checksum of :data:`PUBLISHED_SUBSETS`."""
    return hashlib.sha256(("\n".join(ids) + "\n").encode()).hexdigest()


def load_id_list(path: str | Path) -> list[str]:
    """Read an id list: one id per line, surrounding whitespace and blank lines ignored.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "ids.txt")
    >>> _ = open(p, "w").write("2008_000023\\r\\n2008_000028\\n\\n")
    >>> load_id_list(p)
    ['2008_000023', '2008_000028']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file of ids (is it a real pickle?)") from None
    return _ids_from_text(text)


def _verify(path: Path, name: str, spec: PublishedSubset) -> None:
    ids = load_id_list(path)
    got_raw = hashlib.sha256(path.read_bytes()).hexdigest()
    if spec.sha256 is not None:
        got = canonical_sha256(ids)
        if got != spec.sha256:
            raise ValueError(
                f"{name}: checksum mismatch for {path}: expected sha256 {spec.sha256}, but got {got} "
                f"(of the ids in canonical form; {len(ids)} ids, {spec.count} expected)"
            )
        if got_raw != spec.sha256:
            log.info("%s: %s differs from the canonical form only in line endings or blank lines", name, path)
    if len(ids) != spec.count:
        raise ValueError(f"{name}: expected {spec.count} ids in {path}, but got {len(ids)}")
    dup = len(ids) - len(set(ids))
    if dup:
        raise ValueError(f"{name}: {path} lists {dup} ids more than once")


def fetch_published_subset(
    name: str,
    dest_dir: str | Path,
    *,
    source: str | Path | None = None,
    url: str | None = None,
    timeout: float = 30.0,
    retries: int = 2,
) -> Path:
    """Download (or copy from ``source``) a published id list into ``dest_dir`` and verify it.

    Args:
        name: a key of :data:`PUBLISHED_SUBSETS` ("voc-mlt", "coco-mlt").
        dest_dir: folder to write ``PUBLISHED_SUBSETS[name].filename`` into (created if needed).
        source: a local copy of the file to use instead of downloading.
        url: download from here instead of the spec's URL (a mirror).
        timeout: network timeout in seconds.
        retries: retries of a transient failure (see :func:`dbloss.data.download.download_file`).

    Returns:
        The path of the verified file. Read it with :func:`load_id_list`.

    Raises:
        ValueError: unknown ``name``; checksum or id-count mismatch (both hashes named; the
            bad file is removed from ``dest_dir``).
        FileNotFoundError: ``source`` does not exist.
        ConnectionError: the download failed (no network): the message suggests ``--source PATH``.

    >>> p = fetch_published_subset("voc-mlt", "data/lists")  # doctest: +SKIP
    >>> len(load_id_list(p))  # doctest: +SKIP
    1142
    """
    if name not in PUBLISHED_SUBSETS:
        raise ValueError(f"Expected `name` to be one of {sorted(PUBLISHED_SUBSETS)}, but got {name!r}")
    spec = PUBLISHED_SUBSETS[name]
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / spec.filename
    tmp = dest.with_name(dest.name + ".part")
    if source is not None:
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(f"{name}: source file not found: {source}")
        shutil.copyfile(source, tmp)
    else:
        url = url or spec.url
        log.info("downloading %s from %s", name, url)
        try:
            download_file(url, tmp, retries=retries, backoff=0.5, timeout=timeout, progress=False)
        except DownloadError as e:
            raise ConnectionError(
                f"could not download the {name} id list ({e}). Without network access, download the file "
                f"elsewhere and pass it with --source PATH (source=PATH)"
            ) from None
    try:
        _verify(tmp, name, spec)
    except ValueError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


#: The published id list that goes with a data set of :data:`dbloss.data.download.DATASETS`: VOC-MLT is
#: drawn from VOC 2012 trainval, COCO-MLT from COCO 2017 train.
DATASET_SUBSETS: dict[str, str] = {"voc2012": "voc-mlt", "coco2017": "coco-mlt"}


def download_with_subset(name: str, dest: str | Path = "data", *, subset: bool = True, mirror: str | None = None,
                         archives: Sequence[Archive] | None = None, **download_kwargs: Any) -> Path:
    """:func:`dbloss.data.download.download_dataset`, then the data set's published id list; return its ``data_root``.

    ``download_with_subset("voc2012", "data")`` leaves ``data/VOCdevkit/VOC2012/`` and
    ``data/published/voc_mlt_img_id.txt``, the layout the shipped recipes read (``subset:
    data/published/...``); a benchmark of :data:`dbloss.data.download.BENCHMARK_DATA` ("voc-mlt",
    "coco-mlt") does so for each of its data sets in turn.

    Args:
        name, dest, mirror, archives, download_kwargs (``keep_archives``, ``progress``, timeouts): as
            :func:`dbloss.data.download.download_dataset`.
        subset: also fetch and verify the list of :data:`DATASET_SUBSETS` (VOC-MLT with voc2012,
            COCO-MLT with coco2017) into ``dest/published``, from the mirror when one is given
            (or set in ``$DBLOSS_MIRROR``); a list already there is kept.

    A second call with everything in place does nothing.
    """
    if name in BENCHMARK_DATA and archives is None:
        roots = [download_with_subset(part, dest, subset=subset, mirror=mirror, **download_kwargs)
                 for part in BENCHMARK_DATA[name]]
        return roots[0]
    root = download_dataset(name, dest, mirror=mirror, archives=archives, **download_kwargs)
    if subset and name in DATASET_SUBSETS:
        spec = PUBLISHED_SUBSETS[DATASET_SUBSETS[name]]
        folder = Path(dest) / "published"
        if not (folder / spec.filename).exists():
            fetch_published_subset(DATASET_SUBSETS[name], folder,
                                   url=mirror_url(spec.filename, spec.url, resolve_mirror(mirror)))
    return root
