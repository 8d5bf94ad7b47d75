"""The document writer: stage under ``docs/.tmp``, sync, rename into place, sync directories.

A batch is durable before it is visible.  Its protocol, each step a fault-seam point:

1. ``stage`` every new file under the writer's staging directory, then ``sync_staged``
   (one ``syncfs`` for the batch);
2. the caller commits *intents* (what the batch will touch, and how to finish or undo it;
   an index the batch's ``syncfs`` also flushes writes them just before step 1's sync);
3. ``publish``: new document directories, and files new to an existing directory, are renamed
   into place, then the renames are synced.  Nothing a visible row references has changed;
4. the caller commits the rows (and marks the intents committed in the same transaction);
5. ``finish``: files a visible document *replaces* (``metadata.json`` always, a changed
   prompt) and files it *drops* are renamed over or removed, then synced;
6. the caller clears the intents, and ``cleanup`` removes the batch's staging directory.

A crash before 4 is undone by ``recover`` (new directories and added files removed); a crash
after 4 is finished by it (replacements and removals redone from staging).  Directories of
documents are never deleted: a document that loses its sources is kept (``superseded``).
"""

from __future__ import annotations

import ctypes
import enum
import errno
import hashlib
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from docwatch.core.jsontext import metadata_bytes
from docwatch.store import faults
from docwatch.store.folders import made_if_missing
from docwatch.store.sourcefiles import CHUNK, count_chars, digest_and_chars, open_source
from docwatch.store.stager import write_all, write_new_file

_libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None
HAS_SYNCFS = _libc is not None and hasattr(_libc, "syncfs")


class SourceChanged(Exception):
    """A source's bytes no longer match the hash it was planned with."""


class Op(enum.Enum):
    """What a batch does to one document directory."""

    CREATE = "create"  # a new directory (or one rebuilt from scratch), renamed into place
    UPDATE = "update"  # files of a directory that exists: added, replaced or dropped


@dataclass(frozen=True)
class FileSource:
    """Where a document file comes from: a legacy file with an expected hash (maybe in memory)."""

    path: str | Path  # a str in the hot path: pathlib costs more than the syscall here
    sha256: str
    content: bytes | None = None
    mtime_ns: int | None = None


@dataclass
class StagedDocument:
    doc_id: str
    stage: str
    op: Op
    staged_dir: Path
    files: list[str] = field(default_factory=list)  # names written under staged_dir
    chars: dict[str, int] = field(default_factory=dict)
    remove: tuple[str, ...] = ()  # names the document drops (after the commit)
    add: tuple[str, ...] = ()  # UPDATE: names new to the directory (before the commit)
    replace: tuple[str, ...] = ()  # UPDATE: names that exist and change (after the commit)

    def intent(self, staging_from_docs: str) -> dict:
        """What recovery needs to undo (before the commit) or finish (after it) this write;
        ``staging_from_docs`` is the batch's staging directory relative to the docs root."""
        return {
            "dir": f"{staging_from_docs}/{self.staged_dir.name}",
            "add": list(self.add),
            "replace": list(self.replace),
            "remove": list(self.remove),
        }


class DocStore:
    """Owns ``<docs_root>``: document directories, and this writer's staging directory.

    ``staging`` is private to one writer of one index (``docs/.tmp/<index>/<writer>``), so
    recovery never touches another index's or another host's batches.
    """

    def __init__(
        self,
        docs_root: Path,
        *,
        staging: Path | None = None,
        link: bool = False,
        file_mode: int = 0o644,
        dir_mode: int = 0o755,
    ) -> None:
        self.docs_root = docs_root
        self.staging_root = staging or docs_root / ".tmp" / "local"
        self.link = link
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self._stage_dirs: dict[str, Path] = {}

    def doc_path(self, stage: str, doc_id: str) -> Path:
        folder = self._stage_dirs.get(stage)
        if folder is None:  # one join a document instead of two
            folder = self._stage_dirs[stage] = self.docs_root / stage
        return folder / doc_id

    def begin(self) -> Batch:
        """A new batch in its own staging directory (the staging root is made when missing)."""
        return Batch(self, self.staging_root / uuid.uuid4().hex)

    def recover(self, intents: list[dict]) -> int:
        """Undo or finish what a dead writer's batches left (``intents`` rows, with ``phase``
        and ``detail``), then remove this writer's staging leftovers.  Idempotent: a crash
        here is recovered by the next start.  Returns how many paths were changed."""
        changed = 0
        for intent in intents:
            target = self.doc_path(intent["stage"], intent["doc_id"])
            detail = intent["detail"]
            committed = intent["phase"] == "committed"
            if intent["op"] == Op.CREATE.value and not committed and target.exists():
                shutil.rmtree(target)
                changed += 1
            elif intent["op"] == Op.UPDATE.value and not committed:
                for name in detail.get("add", ()):
                    changed += _unlink(target / name)
            elif intent["op"] == Op.UPDATE.value:
                staged = self.docs_root / detail["dir"] if detail.get("dir") else None
                for name in detail.get("replace", ()):
                    if staged is not None and (staged / name).exists():
                        os.replace(staged / name, target / name)
                        changed += 1
                for name in detail.get("remove", ()):
                    changed += _unlink(target / name)
        if self.staging_root.exists():
            for leftover in self.staging_root.iterdir():
                shutil.rmtree(leftover, ignore_errors=True)
                changed += 1
        if changed or intents:
            sync_filesystem(self.docs_root)
            faults.point("recovered")
        return changed


class Batch:
    """One group of documents made durable together (the protocol in the module docstring)."""

    def __init__(self, store: DocStore, root: Path) -> None:
        self.store = store
        self.root = root
        self.documents: list[StagedDocument] = []
        self._lock = threading.Lock()  # documents are staged on several I/O threads
        # The staging root is made by the first batch (or again, should it have been removed).
        made_if_missing(store.staging_root, store.dir_mode, root.mkdir, store.dir_mode)

    def stage(
        self,
        doc_id: str,
        stage: str,
        op: Op,
        files: dict[str, FileSource],
        remove: tuple[str, ...] = (),
    ) -> StagedDocument:
        """Write a document's new files under staging; raises SourceChanged on a hash mismatch.

        The caller adds ``metadata.json`` with ``write_metadata`` once the row is final.
        """
        staged = StagedDocument(doc_id, stage, op, self.root / doc_id, remove=remove)
        staged.staged_dir.mkdir(mode=self.store.dir_mode)
        base = os.fspath(staged.staged_dir)
        try:
            for name, source in files.items():
                staged.chars[name] = self._place(source, f"{base}/{name}")
                staged.files.append(name)
        except BaseException:
            shutil.rmtree(staged.staged_dir, ignore_errors=True)
            raise
        with self._lock:
            self.documents.append(staged)
        return staged

    def write_metadata(self, staged: StagedDocument, metadata: dict) -> None:
        data = metadata_bytes(metadata)
        self._write_bytes(f"{os.fspath(staged.staged_dir)}/metadata.json", data)
        staged.files.append("metadata.json")
        if staged.op is Op.UPDATE:
            target = self.store.doc_path(staged.stage, staged.doc_id)
            present = {n for n in staged.files if (target / n).exists()}
            staged.add = tuple(n for n in staged.files if n not in present)
            staged.replace = tuple(n for n in staged.files if n in present)

    def add_staged(self, staged: StagedDocument) -> None:
        """A document staged by another process (``ingest/staging.py``): its files exist."""
        with self._lock:
            self.documents.append(staged)

    def drop(self, staged: StagedDocument) -> None:
        with self._lock:
            self.documents.remove(staged)
        shutil.rmtree(staged.staged_dir, ignore_errors=True)

    def intents(self) -> list[tuple[str, str, str, dict]]:
        """(doc_id, stage, op, detail) of every staged document, for the intents commit."""
        rel = os.path.relpath(self.root, self.store.docs_root)  # once: relpath is costly
        return [(s.doc_id, s.stage, s.op.value, s.intent(rel)) for s in self.documents]

    # -- file placement ------------------------------------------------------------------

    def _place(self, source: FileSource, target: str) -> int:
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

    def _verify_linked(self, source: FileSource, target: str) -> int:
        """Check the link shows the hashed version: by stat when the bytes are at hand."""
        if source.content is not None and source.mtime_ns is not None:
            st = os.stat(target)
            if (st.st_size, st.st_mtime_ns) == (len(source.content), source.mtime_ns):
                return count_chars(source.content)
        # The source's own inode: read as a source (no atime change through the link).
        digest, chars = digest_and_chars(target)
        if digest != source.sha256:
            os.unlink(target)
            raise SourceChanged(f"{source.path}: content changed since it was read")
        return chars

    def _copy_stream(self, source: FileSource, target: str) -> int:
        digest, chars = hashlib.sha256(), 0
        src_fd = open_source(source.path)
        try:
            dst_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.store.file_mode)
            try:
                while chunk := os.read(src_fd, CHUNK):
                    digest.update(chunk)
                    chars += count_chars(chunk)
                    write_all(dst_fd, chunk)
                if not HAS_SYNCFS:
                    os.fsync(dst_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        if digest.hexdigest() != source.sha256:
            raise SourceChanged(f"{source.path}: content changed since it was read")
        return chars

    def _write_bytes(self, target: str, data: bytes) -> None:
        write_new_file(target, data, self.store.file_mode, fsync=not HAS_SYNCFS)

    # -- the protocol --------------------------------------------------------------------

    def sync_staged(self) -> None:
        """Step 1: make every staged file durable (one syncfs for the batch)."""
        faults.point("staged")
        sync_filesystem(self.root)
        faults.point("files_synced")

    def publish(self) -> None:
        """Step 3: rename new directories and new files into place; sync the renames."""
        touched: set[Path] = set()
        for staged in self.documents:
            target = self.store.doc_path(staged.stage, staged.doc_id)
            if staged.op is Op.CREATE:
                made_if_missing(  # the stage's folder, made by its first document
                    target.parent, self.store.dir_mode, _rename_over_dir, staged.staged_dir, target
                )
                touched.add(target.parent)
            else:
                for name in staged.add:
                    os.rename(staged.staged_dir / name, target / name)
                touched.add(target)
            faults.point("renamed")
        self._sync(touched)
        faults.point("dirs_synced")

    def has_work_after_commit(self) -> bool:
        return any(s.replace or s.remove for s in self.documents)

    def finish(self) -> None:
        """Step 5: replace and drop files of visible documents (their rows are committed)."""
        touched: set[Path] = set()
        for staged in self.documents:
            if not (staged.replace or staged.remove):
                continue
            target = self.store.doc_path(staged.stage, staged.doc_id)
            for name in staged.replace:
                os.replace(staged.staged_dir / name, target / name)
            for name in staged.remove:
                _unlink(target / name)
            touched.add(target)
            faults.point("replaced")
        if touched:
            self._sync(touched)
            faults.point("replaced_synced")

    def cleanup(self) -> None:
        """Remove the batch's staging directory: one ``rmdir`` when every document left it
        (renamed into place), else the whole tree."""
        try:
            os.rmdir(self.root)
        except OSError:
            shutil.rmtree(self.root, ignore_errors=True)
        faults.point("cleaned")

    def _sync(self, directories: set[Path]) -> None:
        if HAS_SYNCFS:
            sync_filesystem(self.store.docs_root)
        else:
            for directory in directories:
                fsync_dir(directory)


def _rename_over_dir(staged: Path, target: Path) -> None:
    """Rename a staged directory into place; one there already (a document rebuilt from
    scratch: ``verify --repair``, a damaged directory) is removed first.  The rename is tried
    first, so a new document costs no stat of its target (4% of a scan's main-thread samples;
    within the noise of its wall time, bench/README.md "Tenth pass")."""
    try:
        os.rename(staged, target)  # also replaces an empty directory, as rmtree + rename would
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        shutil.rmtree(target)
        os.rename(staged, target)


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    return 1


def sync_filesystem(path: Path) -> None:
    """syncfs(2) the filesystem holding ``path`` (whole-filesystem flush, one call)."""
    if not HAS_SYNCFS:
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
