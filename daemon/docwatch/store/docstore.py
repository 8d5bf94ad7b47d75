"""The document writer: stage under ``docs/.tmp``, sync, rename into place, sync directories.

Durability is batched: one ``syncfs`` for all staged files and one for all renames of a batch
(falling back to per-file and per-directory ``fsync`` where ``syncfs`` is missing).  Rows are
committed by the caller only after ``publish`` returns, so a crash leaves either nothing
visible or a complete document; ``recover`` removes what a dead writer left behind.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from docwatch.store import faults

CHUNK = 1 << 20
_CONTINUATION = bytes(range(0x80, 0xC0))
_libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
_HAS_SYNCFS = _libc is not None and hasattr(_libc, "syncfs")


class SourceChanged(Exception):
    """A source's bytes no longer match the hash it was planned with."""


def count_chars(data: bytes) -> int:
    """Characters in UTF-8 text (lead bytes); undecodable bytes count one each, roughly."""
    return len(data.translate(None, _CONTINUATION))


@dataclass(frozen=True)
class FileSource:
    """Where a document file comes from: a legacy file with an expected hash (maybe in memory)."""

    path: Path
    sha256: str
    content: bytes | None = None
    mtime_ns: int | None = None


@dataclass
class StagedDocument:
    doc_id: str
    stage: str
    op: str  # create | update | retire
    staged_dir: Path
    files: list[str] = field(default_factory=list)
    chars: dict[str, int] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


class DocStore:
    """Owns ``<docs_root>``: document directories and the ``.tmp`` staging area."""

    def __init__(
        self, docs_root: Path, *, link: bool = False, file_mode: int = 0o644, dir_mode: int = 0o755
    ) -> None:
        self.docs_root = docs_root
        self.staging_root = docs_root / ".tmp"
        self.link = link
        self.file_mode = file_mode
        self.dir_mode = dir_mode

    def doc_path(self, stage: str, doc_id: str) -> Path:
        return self.docs_root / stage / doc_id

    def begin(self) -> Batch:
        self.staging_root.mkdir(parents=True, exist_ok=True, mode=self.dir_mode)
        return Batch(self, self.staging_root / uuid.uuid4().hex)

    def recover(self, intents: list[tuple[str, str, str]], committed: set[str]) -> int:
        """Remove staging leftovers and documents created by a batch that never committed."""
        removed = 0
        for doc_id, stage, op in intents:
            target = self.doc_path(stage, doc_id)
            if op == "create" and doc_id not in committed and target.exists():
                shutil.rmtree(target)
                removed += 1
        if self.staging_root.exists():
            for leftover in self.staging_root.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
                removed += 1
        for doc_id, stage, op in intents:  # retired by a committed batch, dir not yet removed
            target = self.doc_path(stage, doc_id)
            if op == "retire" and doc_id not in committed and target.exists():
                shutil.rmtree(target)
                removed += 1
        if removed:
            fsync_dir(self.docs_root)
        faults.point("recovered")
        return removed

    def drop_unreferenced(self, doc: dict) -> int:
        """Remove parsed/prompt files a committed row no longer references."""
        removed = 0
        for kind in ("parsed", "prompt"):
            path = self.doc_path(doc["stage"], doc["doc_id"]) / f"{kind}.txt"
            if doc[f"_{kind}_key"] is None and path.exists():
                path.unlink()
                removed += 1
        return removed


class Batch:
    """One group of documents made durable together."""

    def __init__(self, store: DocStore, root: Path) -> None:
        self.store = store
        self.root = root
        self.documents: list[StagedDocument] = []
        self._files_to_sync: list[Path] = []
        root.mkdir(mode=store.dir_mode)

    def stage(
        self, doc_id: str, stage: str, op: str, files: dict[str, FileSource]
    ) -> StagedDocument:
        """Write a document's new files under staging; raises SourceChanged on a hash mismatch.

        The caller adds ``metadata.json`` with ``write_metadata`` once the row is final.
        """
        staged = StagedDocument(doc_id, stage, op, self.root / doc_id)
        staged.staged_dir.mkdir(mode=self.store.dir_mode)
        try:
            for name, source in files.items():
                staged.chars[name] = self._place(source, staged.staged_dir / name)
                staged.files.append(name)
        except BaseException:
            shutil.rmtree(staged.staged_dir, ignore_errors=True)
            raise
        self.documents.append(staged)
        return staged

    def retire(self, doc_id: str, stage: str) -> StagedDocument:
        """Schedule a document directory for removal (moved into staging at publish)."""
        staged = StagedDocument(doc_id, stage, "retire", self.root / f"retired-{doc_id}")
        self.documents.append(staged)
        return staged

    def write_metadata(self, staged: StagedDocument, metadata: dict) -> None:
        # No indent: json's C encoder only runs without one (3× faster on a backfill).
        data = json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode() + b"\n"
        self._write_bytes(staged.staged_dir / "metadata.json", data)
        staged.files.append("metadata.json")

    def drop(self, staged: StagedDocument) -> None:
        self.documents.remove(staged)
        shutil.rmtree(staged.staged_dir, ignore_errors=True)

    def _place(self, source: FileSource, target: Path) -> int:
        if self.store.link:
            try:
                os.link(source.path, target, follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
            else:
                return self._verify_linked(source, target)
        if source.content is not None:  # the very bytes that were hashed
            self._write_bytes(target, source.content)
            return count_chars(source.content)
        return self._copy_stream(source, target)

    def _verify_linked(self, source: FileSource, target: Path) -> int:
        """Check the link shows the hashed version: by stat when the bytes are at hand."""
        if source.content is not None and source.mtime_ns is not None:
            st = os.stat(target)
            if (st.st_size, st.st_mtime_ns) == (len(source.content), source.mtime_ns):
                return count_chars(source.content)
        digest, chars = hashlib.sha256(), 0
        with open(target, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                chars += count_chars(chunk)
        if digest.hexdigest() != source.sha256:
            target.unlink()
            raise SourceChanged(f"{source.path}: content changed since it was read")
        return chars

    def _copy_stream(self, source: FileSource, target: Path) -> int:
        digest, chars = hashlib.sha256(), 0
        src_fd = os.open(source.path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            dst_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.store.file_mode)
            try:
                while chunk := os.read(src_fd, CHUNK):
                    digest.update(chunk)
                    chars += count_chars(chunk)
                    _write_all(dst_fd, chunk)
                if not _HAS_SYNCFS:
                    os.fsync(dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        if digest.hexdigest() != source.sha256:
            raise SourceChanged(f"{source.path}: content changed since it was read")
        return chars

    def _write_bytes(self, target: Path, data: bytes) -> None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.store.file_mode)
        try:
            _write_all(fd, data)
            if not _HAS_SYNCFS:
                os.fsync(fd)
        finally:
            os.close(fd)

    def sync_staged(self) -> None:
        """Make every staged file durable (one syncfs for the batch)."""
        faults.point("staged")
        sync_filesystem(self.root)
        faults.point("files_synced")

    def publish(self) -> None:
        """Rename staged documents into place, then make the renames durable."""
        touched: set[Path] = set()
        for staged in self.documents:
            target = self.store.doc_path(staged.stage, staged.doc_id)
            if staged.op == "create":
                if target.parent not in touched:
                    target.parent.mkdir(parents=True, exist_ok=True, mode=self.store.dir_mode)
                if target.exists():  # left by a batch that died before committing
                    shutil.rmtree(target)
                os.rename(staged.staged_dir, target)
                touched.add(target.parent)
            elif staged.op == "update":
                for name in staged.files:
                    os.replace(staged.staged_dir / name, target / name)
                touched.add(target)
            faults.point("renamed")
        if _HAS_SYNCFS:
            sync_filesystem(self.store.docs_root)
        else:
            for directory in touched:
                fsync_dir(directory)
        faults.point("dirs_synced")

    def remove_after_commit(self) -> list[str]:
        """Delete what committed rows no longer reference (retired dirs, dropped files).

        Done only after the commit, so no visible row ever points at a missing file; a crash
        before it leaves extra files that recovery removes.  Returns the doc ids touched.
        """
        done = []
        for staged in self.documents:
            target = self.store.doc_path(staged.stage, staged.doc_id)
            if staged.op == "retire" and target.exists():
                shutil.rmtree(target)
            for name in staged.remove:
                (target / name).unlink(missing_ok=True)
            if staged.op == "retire" or staged.remove:
                done.append(staged.doc_id)
        return done

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        faults.point("cleaned")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def sync_filesystem(path: Path) -> None:
    """syncfs(2) the filesystem holding ``path`` (whole-filesystem flush, one call)."""
    if not _HAS_SYNCFS:
        fsync_dir(path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
