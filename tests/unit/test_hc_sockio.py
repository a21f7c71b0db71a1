"""sockio.Poller's callback interface: arm (register, or modify a registration) and discard (only its owner's)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from healthchecks import sockio
from tests.lab import await_for

pytestmark = pytest.mark.skipif(not sockio.HAVE_EPOLL, reason="sockio's poller needs epoll")


async def test_arm_calls_back_once_and_rearms_a_registered_descriptor() -> None:
    p = sockio.poller(asyncio.get_running_loop())
    assert p is not None
    a, b = socket.socketpair()
    with a, b:
        seen: list[int] = []
        p.arm(a.fileno(), sockio.IN, seen.append, registered=True)  # not registered yet: falls back to register
        b.send(b"x")
        await await_for(lambda: seen, what="the first readiness")
        assert len(seen) == 1 and a.fileno() not in p.waiting
        p.arm(a.fileno(), sockio.IN, seen.append)  # registered already (one-shot): falls back to modify
        await await_for(lambda: len(seen) == 2, what="the second readiness")
        p.discard(a.fileno(), seen.append)  # nothing armed: a no-op


class _Owner:
    def ready(self, _events: int) -> None:
        raise AssertionError("discarded callbacks are never called")


async def test_discard_forgets_only_its_owners_callback() -> None:
    p = sockio.poller(asyncio.get_running_loop())
    assert p is not None
    a, b = socket.socketpair()
    with a, b:
        mine, other = _Owner(), _Owner()
        p.arm(a.fileno(), sockio.OUT, mine.ready)
        p.discard(a.fileno(), other)
        assert p.waiting.get(a.fileno()) == mine.ready
        p.discard(a.fileno(), mine)
        assert a.fileno() not in p.waiting


async def test_arm_of_a_bad_descriptor_raises_and_keeps_no_callback() -> None:
    p = sockio.poller(asyncio.get_running_loop())
    assert p is not None
    s = socket.socket()
    fd = s.fileno()
    s.close()
    with pytest.raises(OSError):
        p.arm(fd, sockio.IN, lambda _ev: None)
    assert fd not in p.waiting


async def test_close_keeps_a_poller_something_waits_on_and_otherwise_makes_way_for_a_new_one() -> None:
    import gc
    import weakref

    loop = asyncio.get_running_loop()
    p = sockio.poller(loop)
    assert p is not None
    a, b = socket.socketpair()
    with a, b:
        p.arm(a.fileno(), sockio.IN, lambda _ev: None)
        assert sockio.close(loop) is False and not p.closed and sockio.poller(loop) is p
        p.discard(a.fileno(), None)  # no owner given: the callback stays
        assert p.waiting
        p.waiting.clear()
    assert sockio.close(loop) is True and p.closed
    new = sockio.poller(loop)
    assert new is not None and new is not p and not new.closed
    # the last-used cache holds its loop weakly
    other = asyncio.new_event_loop()
    try:
        assert sockio.poller(other) is not None
        ref = weakref.ref(other)
    finally:
        other.close()
    del other
    gc.collect()
    assert ref() is None
