"""Where every analysis writes its results: ``<name>.png`` and ``<name>.json`` in one folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from dbloss.apps.plots import save_figure


def write_analysis(out_dir: str | Path, name: str, fig: Figure, data: dict[str, Any]) -> tuple[Path, Path]:
    """Save ``fig`` as ``out_dir/<name>.png`` and ``data`` as ``out_dir/<name>.json``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig_path = save_figure(fig, out / f"{name}.png")
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(data, indent=1))
    return Path(fig_path), json_path
