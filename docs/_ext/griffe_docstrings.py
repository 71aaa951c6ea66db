"""A griffe extension for the API pages: doctest blocks become code blocks, Sphinx roles code spans.

The project's docstrings end with short ``>>>`` examples outside an ``Examples:`` section (STYLE.md,
rule 5). Griffe's Google parser leaves those lines in the text, where Markdown would read ``>>>`` as
nested quotes and ``[0.6, 1.1]`` as a link; this wraps each block (a ``>>>`` line at the start of a
line through the next blank line) in a ``pycon`` fence before the docstring is parsed, and drops
``# doctest:`` flags. Sphinx roles (``:func:`x```, ``:class:`~a.B```) become code spans (``x``, ``B``).
Loaded by mkdocstrings (``extensions`` in mkdocs.yml); not part of the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_FLAGS = re.compile(r"\s*#\s*doctest:.+$")
_ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def plain_roles(text: str) -> str:
    """Sphinx cross-reference roles as Markdown code spans (``~`` keeps the last name only).

    >>> plain_roles("see :func:`~dbloss.metrics.f1_scores` and :class:`LabelStats`")
    'see `f1_scores` and `LabelStats`'
    """
    return _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", text)


def fence_doctests(text: str) -> str:
    """``text`` with every unindented run of doctest lines fenced as ``pycon``.

    >>> fence_doctests("Sum.\\n>>> 1 + 1  # doctest: +SKIP\\n2").splitlines()
    ['Sum.', '', '```pycon', '>>> 1 + 1', '2', '```']
    """
    out: list[str] = []
    in_block = in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_block and not line.strip():
            out += ["```", ""]
            in_block = False
            continue
        if not in_block and not in_fence and line.startswith(">>>"):
            if out and out[-1].strip():
                out.append("")
            out.append("```pycon")
            in_block = True
        out.append(_FLAGS.sub("", line) if in_block else line)
    if in_block:
        out.append("```")
    return "\n".join(out)


class MarkdownDocstrings(griffe.Extension):
    """Fence the doctest blocks and plain the Sphinx roles of every docstring the API pages load."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(fence_doctests(obj.docstring.value))
