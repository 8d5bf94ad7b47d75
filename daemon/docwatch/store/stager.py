"""The staging helper: a process that creates a batch's new document files while the batch
is still being planned (``docwatch scan``; bench/README.md, "Eighteenth pass").

Its own interpreter does the kernel's file creation, so the planner's Python and the staging
no longer pass one GIL back and forth.  Stdlib only, and started by path (``python -I -S
stager.py <parent pid>``): it costs a bare interpreter.  ``docstore`` uses ``write_new_file`` too.

Its peak RSS is about 11 MiB: a bare interpreter (``-I -S``) is 8.4, ``ctypes`` (for
``prctl``) 1.4, a message's payload under 1.  It imports no ``pickle`` (1.4 MiB more) or
``ctypes.util`` (2): its messages are framed here, with ``struct``.

Protocol: messages on stdin, each a kind byte, a 4-byte length and a payload (``encode``):

* ``("begin", root, file_mode, dir_mode)``: a batch's staging directory (it exists);
* ``("docs", [(doc_id, [(name, bytes), …]), …])``: create ``root/doc_id`` and its files;
* ``("end",)``: replied on stdout once every document before it is written, with the ones
  that failed, ``{doc_id: (errno, strerror, filename)}`` (``read_reply``); a document that
  failed was removed whole.

It ends at EOF, dies with its parent (``PR_SET_PDEATHSIG``) and leaves SIGINT and SIGTERM to the
parent.
"""

from __future__ import annotations

import ctypes
import io
import os
import signal
import struct
import sys

PR_SET_PDEATHSIG = 1
_HEAD = struct.Struct("!cI")  # kind, payload length
_MODES = struct.Struct("!II")  # file_mode, dir_mode
_DOC = struct.Struct("!HH")  # doc_id length, number of files
_FILE = struct.Struct("!HI")  # name length, data length
_KINDS = {"begin": b"B", "docs": b"D", "end": b"E"}
#: Signals the helper ignores: they are its parent's to act on.
LEFT_TO_THE_PARENT = {signal.SIGINT, signal.SIGTERM}


def encode(message: tuple) -> list[bytes]:
    """A message as the byte strings to write, in order (the data is not copied)."""
    if message[0] == "begin":
        _, root, file_mode, dir_mode = message
        payload = [_MODES.pack(file_mode, dir_mode), os.fsencode(root)]
    elif message[0] == "docs":
        payload = []
        for doc_id, files in message[1]:
            id_bytes = doc_id.encode()
            payload += [_DOC.pack(len(id_bytes), len(files)), id_bytes]
            for name, data in files:
                name_bytes = name.encode()
                payload += [_FILE.pack(len(name_bytes), len(data)), name_bytes, data]
    else:
        payload = []
    return [_HEAD.pack(_KINDS[message[0]], sum(map(len, payload))), *payload]


def _read(inp: io.BufferedIOBase, size: int) -> bytes:
    data = inp.read(size)
    if len(data) != size:
        raise EOFError("the stream ended mid-message")
    return data


def read_reply(inp: io.BufferedIOBase) -> dict[str, tuple[int, str, str]]:
    """The helper's answer to ``end``: the documents it could not write."""
    kind, size = _HEAD.unpack(_read(inp, _HEAD.size))
    if kind != b"R":
        raise ValueError(f"not a reply: {kind!r}")
    fields = _read(inp, size).split(b"\0") if size else []
    return {
        fields[i].decode(): (int(fields[i + 1]), fields[i + 2].decode(), os.fsdecode(fields[i + 3]))
        for i in range(0, len(fields), 4)
    }


def _reply(out: io.BufferedIOBase, failed: dict[str, tuple[int, str, str]]) -> None:
    fields = []
    for doc_id, (code, strerror, filename) in failed.items():
        fields += [doc_id.encode(), str(code).encode(), strerror.encode(), os.fsencode(filename)]
    payload = b"\0".join(fields)
    out.write(_HEAD.pack(b"R", len(payload)) + payload)
    out.flush()


def write_new_file(path: str, data: bytes | memoryview, mode: int, fsync: bool = False) -> None:
    """Create ``path`` (it must not exist) holding ``data``; synced only with ``fsync`` (a
    batch's files are made durable by one ``syncfs`` where there is one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``data`` to ``fd`` whole (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_document(
    directory: str, files: list[tuple[str, bytes | memoryview]], file_mode: int, dir_mode: int
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


def serve(inp: io.BufferedIOBase, out: io.BufferedIOBase) -> None:
    """Answer the protocol until EOF."""
    root, file_mode, dir_mode = "", 0o644, 0o755
    failed: dict[str, tuple[int, str, str]] = {}
    while True:
        head = inp.read(_HEAD.size)
        if len(head) < _HEAD.size:  # EOF: the parent closed its end, or died mid-message
            return
        kind, size = _HEAD.unpack(head)
        payload = inp.read(size)
        if len(payload) < size:
            return
        if kind == b"B":
            file_mode, dir_mode = _MODES.unpack_from(payload)
            root, failed = os.fsdecode(payload[_MODES.size :]), {}
        elif kind == b"D":
            for doc_id, files in _documents(memoryview(payload)):
                error = write_document(f"{root}/{doc_id}", files, file_mode, dir_mode)
                if error is not None:
                    failed[doc_id] = error
        elif kind == b"E":
            _reply(out, failed)


def _documents(view: memoryview):
    """The (doc_id, [(name, data), …]) of a ``docs`` payload; the data are views, not copies."""
    at = 0
    while at < len(view):
        id_size, count = _DOC.unpack_from(view, at)
        at += _DOC.size
        doc_id, at = bytes(view[at : at + id_size]).decode(), at + id_size
        files = []
        for _ in range(count):
            name_size, data_size = _FILE.unpack_from(view, at)
            at += _FILE.size
            name, at = bytes(view[at : at + name_size]).decode(), at + name_size
            files.append((name, view[at : at + data_size]))
            at += data_size
        yield doc_id, files


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # libc's own symbols
    except (OSError, AttributeError):  # not Linux: EOF on stdin still ends it
        return
    if os.getppid() != parent:  # the parent died before the call
        os._exit(0)


def main() -> None:
    # A Ctrl-C in a terminal and systemd's stop reach the whole process group or cgroup: the
    # parent decides (it finishes its batch, then closes the helper's input).  It started us
    # with them blocked, so one sent before this line is pending, and dropped here.
    for sig in LEFT_TO_THE_PARENT:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, LEFT_TO_THE_PARENT)
    _die_with_parent(int(sys.argv[1]))
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the parent is gone
        os._exit(0)


if __name__ == "__main__":
    main()
