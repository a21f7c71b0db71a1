"""Files the data plane writes as root in the state directory, written so that no one who can plant a symbolic link
(or a FIFO) there can make root write somewhere else.

- :func:`write_atomic` replaces a file: a new file under a random name in the same directory, created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` (never an existing file, never through a symlink), written, fsynced, renamed over
  the target (a rename replaces a symlink there, it does not follow it) and the directory fsynced. On any error the
  temporary file is removed and the target is as it was.
- :func:`open_append` opens a log file for appending: anything but a regular file at its name is removed first, and
  the open does not follow a symlink nor block on a FIFO.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically, never through a symlink. Raises OSError (``path`` unchanged, no
    temporary file left) if it cannot be written."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask does not decide who may read it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_unless_regular(path: str) -> bool:
    """Remove what is at ``path`` if it is not a regular file (a symlink, a FIFO…); True if something was removed.
    A directory there is left and raises IsADirectoryError."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode):
        return False
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{path} is a directory, not a log file")
    os.unlink(path)
    return True


def open_append(path: str, mode: int = 0o600) -> int:
    """A descriptor open for appending to the regular file ``path`` (created with ``mode`` if missing). What is
    there and is not a regular file is removed first; the open neither follows a symlink nor blocks (a FIFO or a
    device put there in between is refused with OSError)."""
    remove_unless_regular(path)
    fd = os.open(
        path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode
    )
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
