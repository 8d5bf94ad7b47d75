"""The staging helper: a process that creates a batch's new document files while the batch
is still being planned (``docwatch scan``; bench/README.md, "Eighteenth pass").

Its own interpreter does the kernel's file creation, so the planner's Python and the staging
no longer pass one GIL back and forth.  Stdlib only, and started by path (``python -I
stager.py``): it costs a bare interpreter.  ``docstore`` uses ``write_new_file`` too.

Its peak RSS is about 12 MiB (a bare interpreter is 8.7; ``ctypes.util`` would add 2).

Protocol, pickled tuples on stdin, one reply on stdout per ``end``:

* ``("begin", root, file_mode, dir_mode)``: a batch's staging directory (it exists);
* ``("docs", [(doc_id, [(name, bytes), …]), …])``: create ``root/doc_id`` and its files;
* ``("end",)``: replies ``("done", {doc_id: (errno, strerror, filename)})`` once every
  document before it is written; a document that failed was removed whole.

It ends at EOF, dies with its parent (``PR_SET_PDEATHSIG``) and leaves SIGINT to the parent.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from typing import BinaryIO

PR_SET_PDEATHSIG = 1


def write_new_file(path: str, data: bytes, mode: int, fsync: bool = False) -> None:
    """Create ``path`` (it must not exist) holding ``data``; synced only with ``fsync`` (a
    batch's files are made durable by one ``syncfs`` where there is one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``data`` to ``fd`` whole (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_document(
    directory: str, files: list[tuple[str, bytes]], file_mode: int, dir_mode: int
) -> tuple[int, str, str] | None:
    """Create a document's staged directory and files; on an error remove what was made and
    return (errno, strerror, filename) for the parent to raise."""
    made = False
    try:
        os.mkdir(directory, dir_mode)
        made = True
        for name, data in files:
            write_new_file(f"{directory}/{name}", data, file_mode)
    except OSError as exc:
        if made:  # never remove a directory this call did not make
            import shutil  # here: an import the helper's every start would pay for

            shutil.rmtree(directory, ignore_errors=True)
        return (exc.errno or 0, exc.strerror or str(exc), str(exc.filename or directory))
    return None


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer the protocol until EOF."""
    root, file_mode, dir_mode = "", 0o644, 0o755
    failed: dict[str, tuple[int, str, str]] = {}
    while True:
        try:
            message = pickle.load(inp)
        except (EOFError, pickle.UnpicklingError):  # the parent closed or died mid-message
            return
        if message[0] == "begin":
            _, root, file_mode, dir_mode = message
            failed = {}
        elif message[0] == "docs":
            for doc_id, files in message[1]:
                error = write_document(f"{root}/{doc_id}", files, file_mode, dir_mode)
                if error is not None:
                    failed[doc_id] = error
        elif message[0] == "end":
            pickle.dump(("done", failed), out)
            out.flush()


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # libc's own symbols
    except (OSError, AttributeError):  # not Linux: EOF on stdin still ends it
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(0)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(sys.argv[1]))
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the parent is gone
        os._exit(0)


if __name__ == "__main__":
    main()
