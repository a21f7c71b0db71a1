"""Advert authentication — pure.

1. lvs-ha HMAC (both peers must be lvs-ha). A 32-byte trailer follows the unchanged RFC VRRP message, so the
   message and its checksum stay RFC-shaped and routers that only parse ``count`` addresses ignore the trailer::

       0      4     5       6          8                 16                      32
       | "LVHA" | ver=1 | key id | reserved=0 | counter (64-bit) | HMAC-SHA256[:16] |

   The MAC covers the pseudo-header (src, dst, protocol 112, length of message + trailer), the VRRP message and the
   first 16 trailer bytes. The counter is seeded from the wall clock in microseconds and strictly increases, so a
   restarted sender does not go backwards (as long as its wall clock does not step back past its last advert). The
   receiver keeps the highest counter per source and rejects anything not above it (``Replay``). Several keys may be
   accepted at once (rotation); the signer uses one.

   Sending: ``msg = encode(advert, src, dst); payload = msg + signer.sign(msg, src, dst, time.time())``.
   Receiving: ``msg = verifier.verify(payload, src, dst); advert = decode(msg, src, dst)``.

2. VRRPv2 simple password (RFC 3768 type 1, deprecated but what Keepalived's ``auth_type PASS`` sends):
   ``password_auth_data`` and ``check_v2_auth``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ha.vrrp.packet import (
    Advert,
    AuthType,
    BadAuth,
    IPAddress,
    Replay,
    VrrpLocalError,
    message_length,
    pseudo_header,
)

MAGIC = b"LVHA"
TRAILER_VERSION = 1
MAC_LEN = 16
TRAILER_HEAD = struct.Struct("!4sBBHQ")
TRAILER_LEN = TRAILER_HEAD.size + MAC_LEN  # 32
MIN_SECRET_LEN = 16


@dataclass(frozen=True)
class HmacKey:
    key_id: int
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 255:
            raise VrrpLocalError(f"key id must be 0..255, not {self.key_id}")
        if len(self.secret) < MIN_SECRET_LEN:
            raise VrrpLocalError(f"an HMAC key needs at least {MIN_SECRET_LEN} bytes, got {len(self.secret)}")


def parse_key_file(text: str) -> tuple[HmacKey, ...]:
    """Keys from a key file: one key a line, ``ID HEX`` (or just ``HEX``: id 1); ``#`` starts a comment.

    The first key is the one to sign with; all are accepted. Raises ``VrrpLocalError`` naming the line.
    """
    keys: list[HmacKey] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 1:
            kid, secret_hex = "1", parts[0]
        elif len(parts) == 2:
            kid, secret_hex = parts
        else:
            raise VrrpLocalError(f"line {lineno}: expected 'ID HEX' or 'HEX'")
        if not kid.isdigit() or not re.fullmatch(r"[0-9a-fA-F]+", secret_hex) or len(secret_hex) % 2:
            raise VrrpLocalError(f"line {lineno}: expected a decimal key id and an even number of hex digits")
        try:
            key = HmacKey(int(kid), bytes.fromhex(secret_hex))
        except VrrpLocalError as exc:
            raise VrrpLocalError(f"line {lineno}: {exc}") from None
        if any(k.key_id == key.key_id for k in keys):
            raise VrrpLocalError(f"line {lineno}: key id {key.key_id} appears twice")
        keys.append(key)
    if not keys:
        raise VrrpLocalError("no key in the key file")
    return tuple(keys)


def _mac(key: HmacKey, src: IPAddress, dst: IPAddress, message: bytes, head: bytes) -> bytes:
    data = pseudo_header(src, dst, len(message) + TRAILER_LEN) + message + head
    return hmac.new(key.secret, data, hashlib.sha256).digest()[:MAC_LEN]


class Signer:
    """Produces trailers with a strictly increasing counter (wall-clock microseconds, passed in)."""

    def __init__(self, key: HmacKey) -> None:
        self.key = key
        self.last_counter = 0

    def sign(self, message: bytes, src: IPAddress, dst: IPAddress, wall_time_s: float) -> bytes:
        counter = max(self.last_counter + 1, int(wall_time_s * 1_000_000))
        self.last_counter = counter
        head = TRAILER_HEAD.pack(MAGIC, TRAILER_VERSION, self.key.key_id, 0, counter)
        return head + _mac(self.key, src, dst, message, head)


class Verifier:
    """Checks trailers and keeps the highest counter seen per source address."""

    def __init__(self, keys: Iterable[HmacKey]) -> None:
        self.keys = {k.key_id: k for k in keys}
        if not self.keys:
            raise VrrpLocalError("a verifier needs at least one key")
        self.last_counter: dict[IPAddress, int] = {}

    def verify(self, payload: bytes, src: IPAddress, dst: IPAddress) -> bytes:
        """Return the VRRP message of an authentic, fresh ``payload``; raise ``BadAuth`` / ``Replay`` otherwise
        (or another ``VrrpProtocolError`` if the header is too broken to find the trailer)."""
        mlen = message_length(payload, src.version)
        trailer = payload[mlen : mlen + TRAILER_LEN]
        if len(trailer) < TRAILER_LEN:
            raise BadAuth("no lvs-ha HMAC trailer (is the peer configured with the same key file?)")
        magic, version, key_id, _reserved, counter = TRAILER_HEAD.unpack_from(trailer)
        if magic != MAGIC or version != TRAILER_VERSION:
            raise BadAuth("no lvs-ha HMAC trailer (bad magic or trailer version)")
        key = self.keys.get(key_id)
        if key is None:
            raise BadAuth(f"unknown key id {key_id}")
        message = payload[:mlen]
        expected = _mac(key, src, dst, message, trailer[: TRAILER_HEAD.size])
        if not hmac.compare_digest(expected, trailer[TRAILER_HEAD.size :]):
            raise BadAuth("HMAC does not verify")
        last = self.last_counter.get(src)
        if last is not None and counter <= last:
            raise Replay(f"counter {counter} not above {last} from {src} (replayed or reordered)")
        self.last_counter[src] = counter
        return message


def password_auth_data(password: str | bytes) -> bytes:
    """The 8 auth-data bytes for a VRRPv2 simple password (NUL-padded; longer passwords are cut, as Keepalived)."""
    raw = password.encode() if isinstance(password, str) else bytes(password)
    return raw[:8].ljust(8, b"\0")


def check_v2_auth(advert: Advert, password: str | bytes | None) -> None:
    """RFC 3768 §7.1: the auth type must match ours, and a type-1 password must be equal (compared in constant
    time). v3 has no auth field. The one place adverts' v2 authentication is checked."""
    if advert.version != 2:
        return
    expected = AuthType.PASSWORD if password else AuthType.NONE
    if advert.auth_type != expected:
        raise BadAuth(f"auth type {advert.auth_type.name} (expected {expected.name})")
    if password and not hmac.compare_digest(advert.auth_data.ljust(8, b"\0"), password_auth_data(password)):
        raise BadAuth("wrong password")


class HmacAuthenticator:
    """``seal``/``check`` adapter for the driver: signs with the first key, accepts all of them.

    ``wall_clock`` (e.g. ``time.time``) is injected by the caller; this module never reads a clock itself.
    """

    def __init__(self, keys: Iterable[HmacKey], wall_clock: Callable[[], float]) -> None:
        keys = tuple(keys)
        if not keys:
            raise VrrpLocalError("HMAC authentication needs at least one key")
        self.signer = Signer(keys[0])
        self.verifier = Verifier(keys)
        self._wall_clock = wall_clock

    def seal(self, message: bytes, src: IPAddress, dst: IPAddress) -> bytes:
        return message + self.signer.sign(message, src, dst, self._wall_clock())

    def check(self, payload: bytes, src: IPAddress, dst: IPAddress) -> bytes:
        return self.verifier.verify(payload, src, dst)
