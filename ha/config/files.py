"""The files the daemon trusts, checked as sshd checks a private key: the config file, the secret files (the API
token ``node.api.token_file``, VRRP ``auth.hmac_key_file``) and the state directory (``node.state_dir``).

- A file the daemon reads is opened without blocking and must be a regular file (a FIFO or a device would hang or
  never end the read); it is read up to a size cap.
- A secret file must be a regular file owned by root (or the daemon's own uid), with no permission for the group or
  others, in a directory that no one else can write in (else they could replace it).
- The state directory must be a directory owned by root (or the daemon's uid) that neither the group nor others can
  write in: the daemon writes there as root.

Each check returns a problem (a sentence naming the file, what is wrong and the command that fixes it) or None; the
loader turns problems into config errors, so ``lvs-ha check-config``, the start and every reload refuse them.
"""

from __future__ import annotations

import os
import pwd
import stat


class UnsafeFile(Exception):
    """A file cannot be used (not regular, too big, unsafe owner or mode); the message says why and what fixes it."""


def allowed_owners() -> frozenset[int]:
    """Who may own a file the daemon trusts: root, and the uid the daemon runs as."""
    return frozenset({0, os.geteuid()})


def _owners_text() -> str:
    euid = os.geteuid()
    return "root" if euid == 0 else f"root or {_who(euid)}"


def _who(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _why(e: OSError) -> str:
    why = e.strerror or str(e)
    return f"{why} (check it as the user the daemon runs as)" if isinstance(e, PermissionError) else why


def kind_of(mode: int) -> str:
    """``a FIFO``, ``a directory``… for a file type that is not a regular file."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _access(mode: int, mask: int) -> str:
    """What the group and others may do, of the bits in ``mask``: ``the group and others can read it``."""
    verbs = {}
    for who, shift in (("the group", 3), ("others", 0)):
        bits = (mode & mask) >> shift & 0o7
        said = " and ".join(v for bit, v in ((4, "read"), (2, "write"), (1, "execute")) if bits & bit)
        if said:
            verbs[who] = said
    if len(verbs) == 2 and len(set(verbs.values())) == 1:
        return f"the group and others can {verbs['others']} it"
    return "; ".join(f"{who} can {said} it" for who, said in verbs.items())


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of a regular file, at most ``limit`` (UnsafeFile if more). The open never blocks (a FIFO with no
    writer) and the file type is checked on the open file, so nothing can be swapped in between."""
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{name} is {kind_of(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise UnsafeFile(f"{name} is larger than {limit} bytes")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise UnsafeFile(f"{name} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def secret_problem(path: str, what: str = "a secret file") -> str | None:
    """Why ``path`` must not hold a secret, or None. A missing file is not reported here (reading it is)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot check {path}: {_why(e)}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is {kind_of(st.st_mode)}, not a regular file; {what} must be a regular file"
    if st.st_uid not in allowed_owners():
        return (
            f"{path} is owned by {_who(st.st_uid)}, who can rewrite it; {what} must be owned by {_owners_text()}: "
            f"chown root {path}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (
            f"{path} has mode 0{mode:03o} ({_access(mode, 0o077)}); {what} must be readable by its owner only: "
            f"chmod 600 {path}"
        )
    dirs = dict.fromkeys([os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))])
    for d in dirs:
        problem = _dir_problem(d, path)
        if problem is not None:
            return problem
    return None


def _dir_problem(d: str, path: str) -> str | None:
    """The directory holding a secret file: no one but root (or the daemon's uid) may replace what is in it. A
    sticky directory (``/tmp``) only lets owners remove their own files, so it is fine."""
    try:
        st = os.stat(d)
    except OSError as e:
        return f"cannot check {d}, the directory of {path}: {_why(e)}"
    if st.st_uid not in allowed_owners():
        return f"{path} is in {d}, owned by {_who(st.st_uid)}, who can replace the file: chown root {d}"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return (
            f"{path} is in {d}, mode 0{mode:03o} ({_access(mode, 0o022).replace(' it', ' in it')}), so they can "
            f"replace the file: chmod go-w {d}"
        )
    return None


def state_dir_problem(path: str) -> str | None:
    """Why the daemon must not write its state in ``path``, or None (also None when it does not exist yet: the
    daemon makes it, for its owner only)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot check {path}: {_why(e)}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is {kind_of(st.st_mode) if not stat.S_ISREG(st.st_mode) else 'a file'}, not a directory"
    if st.st_uid not in allowed_owners():
        return (
            f"{path} is owned by {_who(st.st_uid)}, who could plant files the daemon writes through; the state "
            f"directory must be owned by {_owners_text()}: chown root {path}"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return (
            f"{path} has mode 0{mode:03o} ({_access(mode, 0o022).replace(' it', ' in it')}), so they could plant "
            f"files the daemon writes through as root: chmod go-w {path}"
        )
    return None


def ensure_state_dir(path: str, what: str = "node.state_dir") -> None:
    """Make the state directory if missing (owner only), then check it. Raises UnsafeFile (``what: problem``) or
    OSError."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    problem = state_dir_problem(path)
    if problem is not None:
        raise UnsafeFile(f"{what}: {problem}")


__all__ = [
    "UnsafeFile",
    "allowed_owners",
    "ensure_state_dir",
    "kind_of",
    "read_regular",
    "secret_problem",
    "state_dir_problem",
]
