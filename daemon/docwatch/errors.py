"""Errors the CLI turns into messages and exit codes (see README "Exit codes")."""

from __future__ import annotations


class DocwatchError(Exception):
    """Base class: a failure with a message fit for an operator."""

    exit_code = 2


class DocumentNotFound(DocwatchError, LookupError):
    """No document matches the query (readers fail fast on this)."""

    exit_code = 1


class IndexCorrupt(DocwatchError):
    """The index file is not a usable SQLite database."""

    exit_code = 3


class IndexBusy(DocwatchError):
    """Another docwatch instance holds the index."""

    exit_code = 4


class ConfigInvalid(DocwatchError):
    """The configuration has problems (every one is listed)."""

    exit_code = 2
