"""The fault seam: one named hook at every durable step of the write path.

Off in production (one ``None`` check per step).  Tests switch it on through the environment:

* ``DOCWATCH_FAULT=<point>:<n>:<action>``: on the n-th time the point is reached, ``exit``
  (``os._exit(86)``: the process dies there, nothing else runs), or raise ``enospc`` / ``eio``;
* ``DOCWATCH_TRACE=<file>``: append ``<pid> <point>`` to the file at every point (the order
  of durable steps, and where a kill landed);

or in-process with ``set_hook``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

#: Every durable step, in the order a batch reaches them.
POINTS = (
    "staged",  # document files written under the writer's staging directory
    "files_synced",  # staged files durable (syncfs / fsync)
    "intents_committed",  # the batch's intents committed
    "renamed",  # one document's new directory or new files renamed into place (per document)
    "dirs_synced",  # the renames durable
    "committing",  # rows, ledger, task facts written, their transaction not committed yet
    "committed",  # rows, ledger, task facts committed (intents marked committed)
    "replaced",  # one visible document's replacements and removals done (per document)
    "replaced_synced",  # those durable
    "intents_cleared",  # the batch's intents removed (only when it had replacements)
    "cleaned",  # the batch's staging directory removed
    "recovered",  # a dead writer's batch undone or finished at start (before its intents go)
)
#: The points a batch passes when it has no replacements (most batches).
CREATE_ONLY = (
    "staged",
    "files_synced",
    "intents_committed",
    "renamed",
    "dirs_synced",
    "committing",
    "committed",
    "cleaned",
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


def tracer(path: str) -> Callable[[str], None]:
    """A hook that appends ``<pid> <point>`` lines to ``path`` (O_APPEND: whole lines)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def trace(reached: str) -> None:
        os.write(fd, f"{os.getpid()} {reached}\n".encode())

    return trace


def chain(*hooks: Callable[[str], None]) -> Callable[[str], None]:
    def both(reached: str) -> None:
        for hook in hooks:
            hook(reached)

    return both


def install_from_env(environ: dict[str, str] | None = None) -> None:
    env = environ if environ is not None else os.environ
    hooks = []
    if env.get("DOCWATCH_TRACE"):
        hooks.append(tracer(env["DOCWATCH_TRACE"]))  # first: the trace shows where it died
    if env.get("DOCWATCH_FAULT"):
        hooks.append(hook_from_spec(env["DOCWATCH_FAULT"]))
    if hooks:
        set_hook(chain(*hooks))
