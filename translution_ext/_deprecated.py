"""Old module paths kept for one release: each warns once and re-exports the new names."""
from __future__ import annotations

import warnings


def warn_moved(old: str, new: str) -> None:
    """Emits the DeprecationWarning of an old module path, pointing at the imports that replace it."""
    warnings.warn(f"translution_ext.{old} is deprecated and will be removed in the next release; "
                  f"import from {new} instead", DeprecationWarning, stacklevel=3)
