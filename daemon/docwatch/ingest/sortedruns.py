"""Sorting more names than should be held at once: sorted runs spilled and merged back.

A stage folder of a large tree holds hundreds of thousands of names.  They are sorted
``RUN_NAMES`` at a time; every full run but the last goes to an anonymous temporary file
(``tempfile.TemporaryFile``: ``$TMPDIR`` or ``/tmp``, already unlinked, never in a watched
folder) and the runs are merged back lazily, so memory stays flat in the size of a folder.
A folder that fits in one run never touches a file.
"""

from __future__ import annotations

import heapq
import itertools
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

#: Names sorted in memory at once (a run); a folder with fewer is never spilled.
RUN_NAMES = 8192
#: Bytes read at a time from a spilled run.
READ_BYTES = 1 << 14

SortKey = Callable[[str], Any] | None
_ENCODING, _ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def sorted_names(names: Iterable[str], key: SortKey = None, runs_of: int = 1) -> Iterator[str]:
    """``names`` in ``sorted(names, key=key)`` order, holding about ``runs_of × RUN_NAMES``
    at a time (a name is a file name: any characters but NUL and ``/``)."""
    source = iter(names)
    spilled: list[IO[bytes]] = []
    size = runs_of * RUN_NAMES
    try:
        run = list(itertools.islice(source, size))
        while (after := next(source, None)) is not None:  # more to come: spill this run
            run.sort(key=key)
            spilled.append(_spill(run))
            run = [after, *itertools.islice(source, size - 1)]
        run.sort(key=key)
        if not spilled:
            yield from run
        else:
            yield from heapq.merge(*map(_read, spilled), run, key=key)
    finally:
        for f in spilled:
            f.close()


def _spill(run: list[str]) -> IO[bytes]:
    """A sorted run written to an anonymous temporary file, NUL after each name (encoded at
    once, as ``os.fsencode`` would each name)."""
    f = tempfile.TemporaryFile()  # noqa: SIM115 (returned open; sorted_names closes it)
    try:
        f.write("\0".join(run).encode(_ENCODING, _ERRORS) + b"\0")
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def _read(f: IO[bytes]) -> Iterator[str]:
    """The names of a spilled run, in order, a block at a time (NUL is never inside an
    encoded character, so a block is cut at its last NUL and decoded at once)."""
    carry = b""
    while block := f.read(READ_BYTES):
        block = carry + block
        cut = block.rfind(b"\0")
        if cut < 0:
            carry = block
            continue
        carry = block[cut + 1 :]
        yield from block[:cut].decode(_ENCODING, _ERRORS).split("\0")
