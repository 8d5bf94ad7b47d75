"""Errors the CLI turns into messages and exit codes (see README "Exit codes")."""

from __future__ import annotations


class DocwatchError(Exception):
    """Base class: a failure with a message fit for an operator."""

    exit_code = 2


class DocumentNotFound(DocwatchError, LookupError):
    """No document matches the query (readers fail fast on this)."""

    exit_code = 1


class IndexCorrupt(DocwatchError):
    """The index is missing, not a usable database, or from a newer docwatch."""

    exit_code = 3


class IndexBusy(DocwatchError):
    """Another docwatch instance holds the index."""

    exit_code = 4


class ConfigInvalid(DocwatchError):
    """The configuration has problems (every one is listed)."""

    exit_code = 2


class PermissionProblem(DocwatchError):
    """A path docwatch must read or write is not allowed to this user (or is read-only);
    the message names the path and the missing permission (exit 77, sysexits' EX_NOPERM)."""

    exit_code = 77


class IndexUnreadable(PermissionProblem):
    """The index exists but this user may not open it (a permission, never corruption)."""
