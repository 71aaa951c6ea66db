"""Tests of the documentation: the MkDocs site builds without a warning, and the README stays a
short front door whose relative links resolve (STYLE.md, rule 17)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_LINES = 170

# [text](target) and ![alt](target), with an optional "title"
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _relative_links(markdown: str) -> list[str]:
    """The link targets of ``markdown`` that point into the repository (no scheme, not mailto)."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)  # links inside code blocks are not links
    return [t for t in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_helper():
    md = "[a](docs/x.md) ![f](docs/f.png) [w](https://e.org) [m](mailto:a@b) [s](#set-up)\n```\n[c](no.md)\n```"
    assert _relative_links(md) == ["docs/x.md", "docs/f.png", "#set-up"]
    assert _github_anchor("Set-up: two commands") == "set-up-two-commands"


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; the front door keeps at most {README_MAX_LINES} "
        "(move the rest into a page of docs/)")


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    anchors = {_github_anchor(m) for m in re.findall(r"^#+\s+(.+)$", text, re.M)}
    links = _relative_links(text)
    assert links, "expected the README to link into docs/"
    broken = []
    for target in links:
        path, _, fragment = target.partition("#")
        if not path:
            if fragment not in anchors:
                broken.append(f"{target} (no such heading in README.md)")
        elif not (REPO / path).exists():
            broken.append(f"{target} (no file {path})")
    assert not broken, "README.md links that do not resolve:\n" + "\n".join(broken)


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]'); the site is not built")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (
        f"`python -m mkdocs build --strict` failed (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "losses" / "index.html").is_file()
