"""Atomic, durable, verified writes of checkpoint files and folders.

Every write goes to a temporary file or folder *in the same directory* as its target (so the
final rename never crosses a filesystem), every byte is flushed and fsynced, the caller's
``verify`` reads the temporary copy back, the old target is optionally kept as a backup, and
only then is the new one renamed into place and the directory fsynced.

Crash guarantees (power loss or SIGKILL at any instant):

* Files: ``os.replace`` is atomic, so the target name always holds either the complete old
  bytes or the complete new bytes. What a crash can leave behind is a temporary file whose
  name contains :data:`TEMP_MARKER`, never a half-written target.
* Folders: on Linux the new folder and the old one are swapped with one
  ``renameat2(RENAME_EXCHANGE)`` call, which is atomic like ``os.replace``. Where that call is
  unavailable (other systems, some filesystems) two renames are needed: the old folder is
  first renamed aside to ``<name>.ckptkit-tmp-old-<token>`` and then the new one to
  ``<name>``. A crash in the window between the two renames leaves no folder at the target
  name, but the complete old folder under that aside name; :func:`recover_dir` puts it back.

Nothing here imports torch: ``ckptkit ls`` and friends use :func:`is_temporary` and must stay fast.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ckptkit.core.errors import CkptkitError

TEMP_MARKER = ".ckptkit-tmp-"
_NEW = "new-"
_OLD = "old-"


def abandoned_writes(folder: Path) -> list[Path]:
    """The temporary files and folders of new writes in ``folder`` (``<name>.ckptkit-tmp-new-*``).

    With no write in progress these are what a crash left: never a complete checkpoint (the
    old one is still at its name), so a writer that owns ``folder`` may delete them. Aside
    folders of an interrupted swap (``-old-``) are complete old checkpoints: see
    :func:`recover_dir`; they are not listed here.
    """
    marker = f"{TEMP_MARKER}{_NEW}"
    return sorted(p for p in Path(folder).iterdir() if marker in p.name)


def is_temporary(path: Path) -> bool:
    """Whether ``path`` names a temporary file or folder left by (or in use by) an atomic write."""
    return TEMP_MARKER in Path(path).name


def fsync_dir(path: Path) -> None:
    """Make the directory entries of ``path`` (creations, renames, deletions) durable."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory; NTFS renames are journaled.
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of a file to disk now, without waiting for it.

    A large write that starts the disk early finds little left to do at its final fsync (so
    the fsync is not a second, serial pass). Linux only (sync_file_range); elsewhere a no-op.
    The final fsync remains what makes the data durable.
    """
    call = _sync_file_range()
    if call is not None:
        call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # argtypes convert the ints


_SYNC_FILE_RANGE: list[Callable[..., int] | None] = []


def _sync_file_range() -> Callable[..., int] | None:
    if not _SYNC_FILE_RANGE:
        import ctypes  # here: reading commands (ls, inspect) never load it

        func = None
        if sys.platform.startswith("linux"):
            func = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
            if func is not None:
                func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        _SYNC_FILE_RANGE.append(func)
    return _SYNC_FILE_RANGE[0]


_BACKUP_SUFFIX = re.compile(r"\.bak(\.\d+)?$")


def is_backup(path: Path) -> bool:
    """Whether ``path`` is named as :func:`default_backup_path` names backups (``<name>.bak``,
    ``<name>.bak.N``): an old checkpoint kept by a repair, to restore by hand, never to resume."""
    return bool(_BACKUP_SUFFIX.search(Path(path).name))


def default_backup_path(target: Path) -> Path:
    """``<name>.bak`` beside ``target``, else ``<name>.bak.1``, ``.bak.2``, ...: never an existing path."""
    target = Path(target)
    candidate = target.with_name(target.name + ".bak")
    n = 0
    while os.path.lexists(candidate):
        n += 1
        candidate = target.with_name(f"{target.name}.bak.{n}")
    return candidate


def atomic_write_file(
    target: Path,
    write: Callable[[BinaryIO], object],   # what it returns (f.write's count, say) is ignored
    *,
    verify: Callable[[Path], None] | None = None,
    backup: Path | None = None,
) -> None:
    """Write ``target`` through ``write(f)`` so that a crash leaves the old or the new file, whole.

    ``verify(tmp_path)`` is called on the complete, fsynced temporary file; raising rejects the
    write (the temporary file is deleted, the target is untouched, the exception propagates).
    ``backup``: where to keep the old target (hard link, else a durable copy); must not exist.
    A ``target`` that is a symbolic link (Lightning's ``save_last="link"`` makes ``last.ckpt`` one,
    a Hugging Face hub snapshot's files link to shared blobs) is replaced by the new file and the
    file it pointed to is left as it was; the backup holds that file's bytes, not the link, which
    would dangle once the file is rotated away.
    """
    target = Path(target)
    _check_backup_free(backup)
    tmp = _temp_name(target, _NEW)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _copy_mode(target, tmp)
        if verify is not None:
            verify(tmp)
        if backup is not None and os.path.lexists(target):
            _keep_file_backup(target, Path(backup))
        os.replace(tmp, target)
    except BaseException:
        _remove_quietly(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_dir(
    target: Path,
    populate: Callable[[Path], None],
    *,
    verify: Callable[[Path], None] | None = None,
    backup: Path | None = None,
) -> None:
    """Build a folder through ``populate(tmp_dir)`` and put it at ``target`` atomically.

    Same contract as :func:`atomic_write_file`. Every file and folder below the temporary
    folder is fsynced before ``verify`` sees it. ``backup``: the old folder is renamed there.
    """
    target = Path(target)
    _check_backup_free(backup)
    tmp = new_temp_dir(target)
    try:
        populate(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_dir(tmp, target, verify=verify, backup=backup)


def new_temp_dir(target: Path) -> Path:
    """An empty temporary folder beside ``target``, for a write finished by :func:`commit_dir`.

    The two halves of :func:`atomic_write_dir`, for writers that fill the folder in the
    background (an asynchronous sharded save) after its name has been handed out.
    """
    tmp = _temp_name(Path(target), _NEW)
    tmp.mkdir()
    return tmp


def commit_dir(
    tmp: Path,
    target: Path,
    *,
    verify: Callable[[Path], None] | None = None,
    backup: Path | None = None,
) -> None:
    """fsync everything below ``tmp``, ``verify`` it, and swap it in at ``target`` atomically.

    On any failure ``tmp`` is deleted and ``target`` is left as it was.
    """
    target = Path(target)
    try:
        _check_backup_free(backup)
        _fsync_tree(tmp)
        if verify is not None:
            verify(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(target):
        _swap_in_dir(tmp, target, None if backup is None else Path(backup))
    else:
        os.rename(tmp, target)
        fsync_dir(target.parent)


def recover_dir(target: Path) -> Path | None:
    """Undo a folder replacement interrupted between its two renames; return what was restored.

    Only acts when nothing exists at ``target`` and exactly one ``<name>.ckptkit-tmp-old-*``
    folder (the complete old folder) lies beside it. Returns the restored path, or None.
    """
    target = Path(target)
    if os.path.lexists(target) or not target.parent.is_dir():
        return None
    prefix = f"{target.name}{TEMP_MARKER}{_OLD}"
    aside = [p for p in target.parent.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    if len(aside) != 1:
        return None
    os.rename(aside[0], target)
    fsync_dir(target.parent)
    return target


def _temp_name(target: Path, kind: str) -> Path:
    return target.with_name(f"{target.name}{TEMP_MARKER}{kind}{os.urandom(6).hex()}")


def _check_backup_free(backup: Path | None) -> None:
    if backup is not None and os.path.lexists(backup):
        raise CkptkitError(backup, "backup path already exists; pick another (ckptkit never overwrites a backup)")


def _copy_mode(source: Path, dest: Path) -> None:
    """A rewritten checkpoint keeps the permissions of the file it replaces."""
    try:
        os.chmod(dest, os.stat(source).st_mode & 0o7777)
    except FileNotFoundError:
        pass


def _keep_file_backup(target: Path, backup: Path) -> None:
    """A hard link costs nothing and survives the replace; copy where links are not allowed. A
    link's backup is of the file it points to (os.link would link the link itself here)."""
    try:
        os.link(os.path.realpath(target), backup)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        atomic_write_file(backup, lambda f: _copy_into(target, f))
        return
    fsync_dir(backup.parent)


def _copy_into(source: Path, f: BinaryIO) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, f, 16 << 20)


def _swap_in_dir(tmp: Path, target: Path, backup: Path | None) -> None:
    """Put ``tmp`` at ``target``; the old folder ends at ``backup`` or is deleted."""
    if _exchange(tmp, target):
        old = tmp  # after the swap the temporary name holds the old folder
        fsync_dir(target.parent)
    else:
        old = _temp_name(target, _OLD)
        os.rename(target, old)
        # The window: no folder at `target` until the next rename; recover_dir() undoes it.
        os.rename(tmp, target)
        fsync_dir(target.parent)
    if backup is not None:
        os.rename(old, backup)
        fsync_dir(backup.parent)
    else:
        shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False  # filesystem or kernel without RENAME_EXCHANGE: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
