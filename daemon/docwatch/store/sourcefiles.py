"""Reading a legacy file as a source is read: read-only, never through a symlink, without
touching its atime (the folders docwatch watches are never modified), a chunk at a time; its
sha256 and its character count.  Shared by the probe, the writer, the task tables and verify.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20
_CONTINUATION = bytes(range(0x80, 0xC0))


def count_chars(data: bytes) -> int:
    """Characters in UTF-8 text (lead bytes); undecodable bytes count one each, roughly.
    ASCII text is checked first: ``isascii`` copies nothing, ``translate`` copies the file."""
    if data.isascii():
        return len(data)
    return len(data.translate(None, _CONTINUATION))


def open_source(path: Path) -> int:
    """Open a legacy file read-only, never following a symlink, without touching its atime."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    noatime = getattr(os, "O_NOATIME", 0)
    try:
        return os.open(path, flags | noatime)
    except PermissionError:
        if not noatime:
            raise
        return os.open(path, flags)  # O_NOATIME needs ownership; fall back


def source_chunks(path: Path) -> Iterator[bytes]:
    """A file's bytes a chunk at a time, read as a source is (``open_source``)."""
    fd = open_source(path)
    try:
        while chunk := os.read(fd, CHUNK):
            yield chunk
    finally:
        os.close(fd)


def digest_and_chars(path: Path) -> tuple[str, int]:
    """The sha256 and the character count of a file, read as a source is."""
    digest, chars = hashlib.sha256(), 0
    for chunk in source_chunks(path):
        digest.update(chunk)
        chars += count_chars(chunk)
    return digest.hexdigest(), chars


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read as a source is."""
    digest = hashlib.sha256()
    for chunk in source_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()
