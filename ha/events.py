"""The daemon's event bus: what ``GET /v1/events``, ``lvs-ha events``, the status page (``/ui``) and the notify hooks
of services (``ha.hooks``) follow.

The daemon publishes one ``Event`` for every role change, realserver up/down, drain/enable, weight reported by a
check, quorum and sorry-server change, reload (ok or rejected) and drift repair, on its event loop, in the order they
happen. Each gets a sequence number (1, 2, ...; per daemon run) and the wall-clock time. The last ``ring_size``
events are kept, so a client that reconnects asks for what it missed (``since``).

A subscriber gets its own bounded queue. Publishing never waits for anyone: when a subscriber's queue is full (a
client that does not read), its queue is emptied and replaced by one final ``overflow`` marker, it is dropped from
the bus, and the stream ends after that line; the client reconnects with ``since`` and learns from the ring (or a
``gap`` line) what it lost. Memory is bounded by ``ring_size + max_subscribers * queue_size`` references to events
whose JSON line is made once. At most ``max_subscribers`` follow at once (``TooManySubscribers`` beyond).

Pure apart from the clock given to the bus; no IO.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("role", "realserver", "drain", "weight", "quorum", "sorry", "reload", "drift", "announce", "bgp", "director")
RING_SIZE = 1000
QUEUE_SIZE = 1000
MAX_SUBSCRIBERS = 32

# ASCII only: a name with U+2028 or U+0085 in it must not end a line for a reader that splits on Unicode line breaks
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def iso(ts: float) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-12-02T23:10:18.123Z``."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    seq: int
    time: float  # wall-clock epoch seconds
    kind: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": iso(self.time), "kind": self.kind, **self.fields}

    @property
    def line(self) -> str:
        """The event as one line of JSON (no newline), made once."""
        cached = self.__dict__.get("_line")
        if cached is None:
            cached = _dumps(self.doc())
            object.__setattr__(self, "_line", cached)
        return cached


def marker(kind: str, now: float, **fields: Any) -> str:
    """A line that is not an event of the ring (no ``seq``): ``overflow``, ``gap``, ``heartbeat``."""
    return _dumps({"time": iso(now), "kind": kind, **fields})


class TooManySubscribers(Exception):
    pass


@dataclass(frozen=True)
class Overflow:
    """The last thing a dropped subscriber receives."""

    lost: int  # events that were queued for it and are gone
    last_seq: int  # the last event it was given before (reconnect with since=last_seq)


class Subscription:
    """One follower's queue. ``await get(timeout)``: the next ``Event``, an ``Overflow`` (then nothing more), None
    at the end of the stream (the bus closed, or after the overflow), or ``TimeoutError`` after ``timeout``."""

    def __init__(self, bus: EventBus, capacity: int) -> None:
        self.bus = bus
        self.capacity = capacity
        self.queue: collections.deque[Event | Overflow] = collections.deque()
        self.closed = False
        self.last_seq = 0  # of the last event handed out by get()
        self._wake = asyncio.Event()

    def offer(self, ev: Event) -> bool:
        """Queue ``ev``; False if the queue was full (the subscriber is then overflowed and closed)."""
        if self.closed:
            return True
        if len(self.queue) >= self.capacity:
            lost = len(self.queue) + 1
            self.queue.clear()
            self.queue.append(Overflow(lost, self.last_seq))
            self.closed = True
            self._wake.set()
            return False
        self.queue.append(ev)
        self._wake.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake.set()
        self.bus._drop(self)

    async def get(self, timeout: float | None = None) -> Event | Overflow | None:
        while not self.queue:
            if self.closed:
                return None
            self._wake.clear()
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        item = self.queue.popleft()
        if isinstance(item, Event):
            self.last_seq = item.seq
        return item


class EventBus:
    def __init__(
        self,
        ring_size: int = RING_SIZE,
        queue_size: int = QUEUE_SIZE,
        max_subscribers: int = MAX_SUBSCRIBERS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ring: collections.deque[Event] = collections.deque(maxlen=ring_size)
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.clock = clock
        self.seq = 0
        self.subscribers: list[Subscription] = []
        self.listeners: list[Callable[[Event], None]] = []
        self.overflowed = 0  # subscribers dropped for not reading
        self.closed = False

    def publish(self, kind: str, **fields: Any) -> Event:
        """Record an event and hand it to every subscriber and listener (never blocks, never raises)."""
        self.seq += 1
        ev = Event(self.seq, self.clock(), kind, fields)
        self.ring.append(ev)
        for sub in list(self.subscribers):
            if not sub.offer(ev):
                self.overflowed += 1
                self._drop(sub)
                log.warning("events: a subscriber fell %d events behind; dropped", self.queue_size)
        for listener in self.listeners:
            try:
                listener(ev)
            except Exception:  # a listener's bug must not stop the daemon's event path
                log.exception("events: listener failed on %s", kind)
        return ev

    def listen(self, fn: Callable[[Event], None]) -> None:
        self.listeners.append(fn)

    def replay(self, since: int) -> tuple[list[Event], int]:
        """The kept events after ``since``, and how many after ``since`` are no longer kept."""
        kept = [ev for ev in self.ring if ev.seq > since]
        first = kept[0].seq if kept else self.seq + 1
        return kept, max(0, first - since - 1)

    def subscribe(self, since: int | None = None) -> tuple[Subscription, list[Event], int]:
        """A new subscription (live events from now), with the replay of what came after ``since`` (none if None)
        and how many of those are lost. Raises TooManySubscribers."""
        if self.closed:
            raise TooManySubscribers("the daemon is stopping")
        if len(self.subscribers) >= self.max_subscribers:
            raise TooManySubscribers(f"at most {self.max_subscribers} event streams at once")
        sub = Subscription(self, self.queue_size)
        sub.last_seq = self.seq
        self.subscribers.append(sub)
        if since is None:
            return sub, [], 0
        replay, lost = self.replay(max(0, since))
        return sub, replay, lost

    def _drop(self, sub: Subscription) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)

    def close(self) -> None:
        """End every stream (the daemon stops)."""
        self.closed = True
        for sub in list(self.subscribers):
            sub.close()


def service_changes(
    before: Mapping[str, tuple[bool, bool]], after: Mapping[str, tuple[bool, bool]]
) -> Iterable[tuple[str, str, bool]]:
    """(service, "quorum" | "sorry", new value) for each service whose quorum or sorry state changed between two
    maps of service -> (quorum, sorry_active). A service new in ``after`` is a baseline, not a change."""
    for name, (quorum, sorry) in after.items():
        old = before.get(name)
        if old is None:
            continue
        if old[0] != quorum:
            yield name, "quorum", quorum
        if old[1] != sorry:
            yield name, "sorry", sorry
