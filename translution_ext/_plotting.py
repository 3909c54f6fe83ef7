"""matplotlib for the PNGs of the demo and the bench CLI: optional, file-only (Agg backend)."""
from __future__ import annotations

MISSING = "matplotlib is not installed (pip install matplotlib, or the [demo] extra): no PNG written"


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save(fig, path: str) -> None:
    """Writes ``fig`` as a PNG and frees it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
