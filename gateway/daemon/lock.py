"""One daemon per buffer: an OS lock on ``<buffer>.lock``, which holds the daemon's PID.

Two daemons on one buffer would seal the same seqs with different content (a forked chain the
platform must treat as forgery), so ``citygw run`` takes an exclusive ``flock(2)`` on a file beside
the buffer before it opens the buffer, and refuses to start while another process holds it. The
kernel releases the lock when its holder exits in any way (``kill -9`` and power cuts included):
there is no stale lock to clean up by hand. The file is never deleted (deleting a lock file races
with the next taker); its content, the holder's PID, is only informative.

Read-only commands (``citygw status``) never take the lock: :func:`look` asks whether someone
holds it with a shared lock attempt released at once, and reads the PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from citygw.errors import BufferStorageError, CitygwError

# a `citygw status` holds a shared lock for microseconds while it looks: a starting daemon waits
# this long for such a reader before it believes another daemon holds the buffer
READER_GRACE = 1.0  # seconds


def lock_path(buffer: Path) -> Path:
    """``/var/lib/citygw/buffer.db`` -> ``/var/lib/citygw/buffer.db.lock``."""
    return buffer.with_name(buffer.name + ".lock")


class BufferInUse(CitygwError):
    """Another process (a running daemon) holds the buffer's lock."""

    def __init__(self, buffer: Path, pid: int | None) -> None:
        self.buffer = buffer
        self.pid = pid
        holder = f"PID {pid}" if pid is not None else "a process whose PID it does not say"
        super().__init__(
            f"buffer {buffer} is in use by another citygw daemon ({holder}, lock {lock_path(buffer)}); "
            "two daemons on one buffer would fork its chain, so this one does not start. Stop the other "
            "(sudo systemctl stop citygw"
            + (f", or kill {pid}" if pid is not None else "")
            + "), or give this config its own buffer.path"
        )


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class BufferLock:
    """The daemon's hold on its buffer, from :meth:`acquire` until :meth:`release` (or exit)."""

    def __init__(self, buffer: Path) -> None:
        self.buffer = buffer
        self.path = lock_path(buffer)
        self._fd: int | None = None

    def acquire(self, *, grace: float = READER_GRACE) -> None:
        """Take the lock and write our PID into it; :class:`BufferInUse` when another holds it,
        :class:`BufferStorageError` when the lock file cannot be made (the directory is not writable,
        a read-only file system): the buffer could not be opened there either."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BufferStorageError(
                f"cannot lock buffer {self.buffer}: {exc.strerror or exc} ({self.path}); "
                "buffer.path must be in a directory the daemon can write"
            ) from exc
        deadline = time.monotonic() + grace
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise BufferInUse(self.buffer, _read_pid(fd)) from None
                    time.sleep(0.05)  # a reader's shared lock lasts microseconds
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the kernel does it anyway when the process ends)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None


@dataclass(frozen=True, slots=True)
class LockState:
    """What the lock file beside a buffer says about a daemon."""

    held: bool | None  # None: the lock file cannot be read (another user's, mode 0600)
    pid: int | None = None  # the holder's, when held and written


def look(buffer: Path) -> LockState:
    """Whether a daemon holds ``buffer`` (and its PID); never creates or writes a file."""
    try:
        fd = os.open(lock_path(buffer), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return LockState(held=False)
    except OSError:
        return LockState(held=None)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return LockState(held=True, pid=_read_pid(fd))
        except OSError:
            return LockState(held=None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return LockState(held=False)
    finally:
        os.close(fd)
