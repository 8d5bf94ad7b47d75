"""Compile docwatch's modules to bytecode before a bench measures anything.

A pip-installed docwatch has its ``.pyc`` files; an editable install writes them on its first
import, unless ``PYTHONDONTWRITEBYTECODE`` is set (it is on the machines these benches ran on):
then every ``python -m docwatch`` recompiles ~35 modules (~0.1 s), a cost no user pays.
"""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "docwatch"


def compile_docwatch() -> None:
    """Write ``__pycache__`` for the package (gitignored); quiet, and idempotent."""
    if not compileall.compile_dir(PACKAGE, quiet=1):
        raise SystemExit(f"cannot compile {PACKAGE} to bytecode")
