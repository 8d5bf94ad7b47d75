"""The fault seam: one named hook at every durable step of the write path.

Off in production (one ``None`` check per step). Tests switch it on with the environment
variable ``DOCWATCH_FAULT=<point>:<n>:<action>`` (action ``exit`` = ``os._exit(86)`` on the n-th
time the point is reached, ``enospc`` / ``eio`` = raise that OSError there) or with ``set_hook``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

#: Every durable step, in the order a batch reaches them.
POINTS = (
    "staged",  # document files written under docs/.tmp
    "files_synced",  # staged files durable (syncfs / fsync)
    "intents_committed",  # the batch's intents row committed
    "renamed",  # one document renamed into place (reached once per document)
    "dirs_synced",  # directories holding the renames durable
    "committed",  # rows, ledger and attempts committed
    "cleaned",  # staging directory of the batch removed
    "recovered",  # leftovers of a dead writer cleaned at start
)

EXIT_CODE = 86
_hook: Callable[[str], None] | None = None


def point(name: str) -> None:
    """Mark a durable step; the installed hook (if any) may crash or raise here."""
    if _hook is not None:
        _hook(name)


def set_hook(hook: Callable[[str], None] | None) -> None:
    global _hook
    _hook = hook


def hook_from_spec(spec: str) -> Callable[[str], None]:
    """Build a hook from ``point:n:action``; raises ValueError on a bad spec."""
    name, n, action = spec.split(":")
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}; known: {', '.join(POINTS)}")
    remaining = int(n)
    errors = {"enospc": errno.ENOSPC, "eio": errno.EIO}
    if action not in errors and action != "exit":
        raise ValueError(f"unknown fault action {action!r}")

    def hook(reached: str) -> None:
        nonlocal remaining
        if reached != name:
            return
        remaining -= 1
        if remaining > 0:
            return
        if action == "exit":
            os._exit(EXIT_CODE)
        if remaining == 0:
            raise OSError(errors[action], f"injected {action} at {name}")

    return hook


def install_from_env(environ: dict[str, str] | None = None) -> None:
    spec = (environ if environ is not None else os.environ).get("DOCWATCH_FAULT")
    if spec:
        set_hook(hook_from_spec(spec))
