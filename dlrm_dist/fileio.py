"""Writing files safely: atomic publishes, one writer per directory, paths kept inside, full disks named.

Every command that writes a directory (preprocessing ``--out``, a run dir, a checkpoint dir,
an export) goes through this module, so the same rules hold everywhere:

- ``atomic_write_text`` / ``atomic_write_bytes``: a temporary name in the same directory,
  fsync, then ``os.replace``: a reader sees the old file or the new one, never half of one.
- ``DirLock``: an exclusive ``fcntl.flock`` on ``DIR/.dlrm_dist.lock``. The kernel drops the
  lock when its holder dies, so a lock left by a dead process never blocks; a live holder is
  named by pid and host. flock is advisory and per open file description: every writer of
  this package takes it; on a multi-node job only the writing rank does.
- ``inside``: joins a name under a directory and refuses a result that escapes it
  (``..``, an absolute name, a symlink out).
- ``disk_full``: turns ENOSPC into a one-line error naming the device, the file and the size.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from dlrm_dist.errors import DlrmError

LOCK_FILE = ".dlrm_dist.lock"


class DirectoryBusyError(DlrmError):
    """Another live process holds the directory's lock (exit 2: the user's two jobs collide)."""


class UnsafePathError(DlrmError):
    """A name would place a file outside the directory it belongs to."""


class DiskFullError(DlrmError):
    """The device filled up while writing; what this run wrote was removed."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode() -> int:
    """What ``open()`` gives a new file: 0666 less the umask. os.umask can only be read by setting
    it, so it is read once, at import, before any thread of this package writes a file."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 would hide the file from the readers open() allows
        with disk_full(path, len(data)), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any, **dumps: Any) -> None:
    """Writes ``value`` as JSON atomically; ``dumps`` go to ``json.dumps`` (indent, sort_keys)."""
    atomic_write_text(path, json.dumps(value, allow_nan=False, **dumps) + "\n")


def inside(directory: str | Path, *names: str) -> Path:
    """``directory/names...``, refused if it would resolve outside ``directory``."""
    base = Path(directory).resolve()
    target = base.joinpath(*names).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"refusing to write {'/'.join(names)!r}: it resolves to {target}, "
                              f"outside {base}")
    return target


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
        return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}" + (
            f" ({info['what']})" if info.get("what") else "")
    except (OSError, ValueError):
        return "another process"


class DirLock:
    """An exclusive, non-blocking lock on a directory, held for a ``with`` block or until released.

    ``what`` says in the holder record what the lock is for (e.g. ``dlrm-data preprocess``).
    """

    def __init__(self, directory: str | Path, what: str = "") -> None:
        self.directory = Path(directory)
        self.what = what
        self._fd: Optional[int] = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def acquire(self) -> "DirLock":
        """Takes the lock or raises DirectoryBusyError naming the holder (pid and host)."""
        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DirectoryBusyError(
                    f"{self.directory} is in use by {_holder(self.path)}: one writer per directory; "
                    f"wait for it to finish or choose another directory") from None
            raise
        # The holder record is informative only: the flock itself is the lock.
        # A full disk may refuse the record; the lock is held all the same.
        self._fd = fd
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what}).encode()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _device_of(path: Path) -> str:
    """The mount point holding ``path`` (what a user looks for in ``df``)."""
    p = path if path.exists() else path.parent
    p = p.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


@contextlib.contextmanager
def disk_full(path: str | Path, needed_bytes: Optional[int] = None) -> Iterator[None]:
    """Re-raises ENOSPC (and EDQUOT) inside the block as DiskFullError naming device, file and size.

    The caller removes what its run wrote (its ``.partial`` files); this only names the problem.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        path = Path(path)
        need = f" (needed about {needed_bytes / 2**20:.1f} MB)" if needed_bytes else ""
        raise DiskFullError(f"no space left on {_device_of(path)} writing {path}{need}") from None


def publish_file(path: str | Path, text: str, what: str, example: str, error: type[DlrmError]) -> None:
    """Writes a user-named file (a plan, a calibration) atomically, creating its directory: a directory at
    ``path``, a full disk or an unwritable place is ``error`` naming ``what`` ("plan file") and the path."""
    target = Path(path)
    if target.is_dir():
        raise error(f"{what} {str(path)!r} is a directory; give a file name such as {str(target / example)!r}")
    try:
        with disk_full(target, len(text)):
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, text)
    except OSError as e:
        raise error(f"cannot write {what} {str(path)!r}: {e.strerror or e}") from None


_CRC_CHUNK = 4 << 20


def crc32c_of(path: str | Path) -> tuple[int, str]:
    """``path``'s size and CRC32C (8 hex digits), read in 4 MB chunks (GB/s: cheap beside any parse)."""
    import crc32c  # here, not at the top: most users of fileio never checksum

    value, size = 0, 0
    buffer = bytearray(_CRC_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            value = crc32c.crc32c(view[:n], value)
            size += n
    return size, f"{value:08x}"

