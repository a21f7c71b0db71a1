"""The daemon's adapter to the VRRP engine in its own process (``Vrrp``), and the collector freeze the daemon calls
after start and reload."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ha.config.model import Config
from ha.metrics import Histogram, InstanceMetrics
from ha.status import InstanceView
from ha.vrrp.driver import malformed_count

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def freeze_long_lived_objects() -> None:
    """Put everything alive now (config, check state, kernel tables) out of the cyclic collector's reach.

    A full collection walks every tracked object with the interpreter lock held; with thousands of services that
    stalls every thread, the VRRP thread included, long enough for a 20 ms advert to be late and the peer to take
    over. Frozen objects are skipped, so later collections only walk what changed since (called after start and
    after each reload)."""
    gc.freeze()


class Vrrp:
    """The VRRP engine (its own process, ``ha.vrrp.process``), seen from the daemon's loop: the daemon's interpreter
    lock, long C calls and garbage collection cannot delay adverts there."""

    def __init__(self, cfg: Config, on_transition: Callable[[dict[str, Any]], None]) -> None:
        from ha.vrrp.process import ProcessEngine
        from ha.vrrp_setup import engine_specs

        specs, groups = engine_specs(cfg)
        # SCHED_FIFO for the engine process's loop thread when the config asks (``vrrp.realtime``)
        realtime = cfg.vrrp.realtime
        self.engine = ProcessEngine(specs, groups, on_transition=on_transition, realtime=realtime)
        self.last: list[dict[str, Any]] = []  # the engine's status as last fetched

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop(handover=True)

    async def failover(self, instance: str | None) -> list[str]:
        return list(await self.engine.failover(instance))

    async def reconfigure(self, cfg: Config) -> dict[str, list[str]]:
        from ha.vrrp_setup import engine_specs

        return dict(await self.engine.reconfigure(*engine_specs(cfg)))

    async def refresh(self) -> None:
        """Fetch the engine's status over the channel (the engine process answers between its timers)."""
        try:
            self.last = list(await self.engine.status())
        except Exception as e:
            log.warning("VRRP engine status unavailable: %s", e)

    def _status(self) -> list[dict[str, Any]]:
        return self.last

    def views(self) -> list[InstanceView]:
        return [InstanceView(str(i["name"]), str(i["role"]), int(i.get("effective_priority", i["priority"])),
                             i.get("master"), i.get("since"), str(i.get("last_reason") or ""), i.get("vrid"),
                             tuple(i.get("vips") or ())) for i in self._status()]

    def metrics(self) -> list[InstanceMetrics]:
        out = []
        for i in self._status():
            c = i.get("counters") or {}
            late = c.get("timer_lateness") or {}
            hist = None
            if late.get("buckets"):
                bounds = [float(b) for b in late["buckets"] if b != "+Inf"]
                hist = Histogram(bounds)
                hist.counts = [int(v) for v in late["buckets"].values()]
                hist.sum, hist.count = float(late.get("sum_s", 0.0)), int(late.get("count", 0))
            errors = c.get("errors") or {}
            out.append(InstanceMetrics(str(i["name"]), int(i.get("vrid") or 0), str(i["role"]),
                                       int(i.get("effective_priority", i["priority"])), int(c.get("transitions", 0)),
                                       int(c.get("adverts_sent", 0)), int(c.get("adverts_received", 0)),
                                       malformed_count(errors) if isinstance(errors, dict) else 0, hist))
        return out
