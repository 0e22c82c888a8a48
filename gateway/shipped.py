"""Files citygw ships beside its code: ``config/`` of a source checkout (or an editable install),
and in an installed wheel the same files under ``<prefix>/share/citygw`` (pyproject.toml's
data-files)."""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent.parent / "config"


def shipped(relative: str) -> Path:
    """The shipped file or directory ``relative`` (to ``config/``), from the checkout when it has it."""
    source = SOURCE_DIR / relative
    installed = Path(sys.prefix) / "share" / "citygw" / relative
    return source if source.exists() or not installed.exists() else installed
