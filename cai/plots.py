"""One way to draw: matplotlib without a display, figures saved as files or inlined as data URIs.

Reports (audit, eval) are single self-contained HTML files, so their plots
travel as base64 PNGs; the card's histogram and training's loss plot are files.
Fixed PNG metadata keeps the same data byte-identical (a re-push changes nothing).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def data_uri(fig, dpi: int = 100, **savefig) -> str:
    """The figure as a data:image/png URI, and the figure closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, **savefig)
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def save(fig, path: Path, dpi: int = 100) -> None:
    """The figure as a PNG file, and the figure closed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    pyplot().close(fig)
