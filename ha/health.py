"""The daemon's adapter to the health-check runner (``Health``): configures the checks from the config, turns their
results into realserver health, weights and status views, and watches how late checks start (``LateWindow``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from ha.checkset import CheckKey, CheckView, combine, combine_weights, deciding, labels
from ha.config.model import Config
from ha.metrics import DaemonMetrics
from ha.status import LastCheck, PassiveView, RsHealth
from ha.via import ViaProbes, target_of

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


HealthKey = tuple[str, str]  # (service name, realserver ident)


class LateWindow:
    """How many checks started late in about the last minute, from samples of the runner's cumulative counters
    (pure: the caller passes the time). The status warns when more than 1% of at least 100 checks were late: the
    checker needs more CPU than it gets, and health results come later than configured."""

    WINDOW_S = 60.0
    MIN_CHECKS = 100
    SHARE = 0.01

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque()

    def add(self, now: float, checks: int, late: int) -> None:
        s = self.samples
        s.append((now, checks, late))
        while len(s) > 2 and now - s[1][0] >= self.WINDOW_S:
            s.popleft()

    def warning(self, late_after_s: float) -> str | None:
        if len(self.samples) < 2:
            return None
        (t0, c0, l0), (t1, c1, l1) = self.samples[0], self.samples[-1]
        checks, late = c1 - c0, l1 - l0
        if checks < self.MIN_CHECKS or late <= checks * self.SHARE:
            return None
        return (
            f"health checks are running late: {late} of the {checks} checks of the last {t1 - t0:.0f} s "
            f"({late / checks:.0%}) started more than {late_after_s:g} s after they were due (the checker gets "
            "less CPU than it needs; results come late)"
        )


class Health:
    """The health-check runner, keyed by (service, realserver, check label) (``ha.checkset``); realservers without a
    check are always up. A realserver's health is the AND of its checks' (``ha.checkset.combine``).

    A check may report a dynamic weight (an ``exec`` check's ``weight=N``): the weight of its last successful result
    is the realserver's weight (``None``: the configured one; with several checks reporting one, the smallest). A
    failed result leaves it as it is (the rise/fall thresholds decide whether the realserver stays up).
    ``on_change`` is called on every up/down transition of a realserver (not of each of its checks),
    ``on_weight(key, old, new)`` when its dynamic weight changes, and only then (the same weight again is no change).
    """

    def __init__(
        self,
        counters: DaemonMetrics,
        on_change: Callable[[HealthKey, str, str, str], None],
        on_weight: Callable[[HealthKey, int | None, int | None], None] | None = None,
    ) -> None:
        from healthchecks.registry import default_registry
        from healthchecks.runner import Runner

        self.runner = Runner(default_registry())
        self.unchecked: set[HealthKey] = set()
        self._on_change = on_change
        self._on_weight = on_weight
        self._counters = counters
        self._weights: dict[CheckKey, int | None] = {}  # the dynamic weight of each check that reported one
        self._members: dict[HealthKey, tuple[CheckKey, ...]] = {}  # a realserver's checks, in config order
        self._types: dict[CheckKey, str] = {}
        self._rs_state: dict[HealthKey, str] = {}  # each checked realserver's combined health, for on_change
        # what the status shows per realserver and per check, kept up to date as results come in (a status
        # request with thousands of realservers then copies nothing)
        self._views: dict[HealthKey, RsHealth] = {}
        self._check_views: dict[CheckKey, CheckView] = {}
        self._passive: dict[HealthKey, PassiveView] = {}  # the last passive trip of each realserver that had one
        self.runner.subscribe(self._changed)
        # every result (a shared probe reports to each service it serves), timeouts and crashes included
        self.runner.subscribe_results(self._result)
        self.late = LateWindow()
        self._sampler: asyncio.Task[None] | None = None

    def _result(self, key: Any, res: Any) -> None:
        self._counters.observe_check(key[0], key[1], bool(res.ok), float(res.latency_s))
        self._check_views[key] = CheckView(
            key[2],
            self._types.get(key, ""),
            self.runner.state(key).value,
            LastCheck(res.ok, res.reason, res.latency_s, time.time()),
        )
        rs = (key[0], key[1])
        self._refresh_view(rs)
        if not res.ok:
            return
        weight = res.weight
        if weight == self._weights.get(key):
            return
        old = self._rs_weight(rs)
        if weight is None:
            del self._weights[key]
        else:
            self._weights[key] = weight
        new = self._rs_weight(rs)
        if self._on_weight is not None and new != old:
            self._on_weight(rs, old, new)

    def _rs_weight(self, rs: HealthKey) -> int | None:
        weights = self._weights
        return combine_weights(weights.get(k) for k in self._members.get(rs, ()))

    def _refresh_view(self, rs: HealthKey) -> None:
        members = self._members.get(rs, ())
        views = tuple(self._check_views.get(k) or CheckView(k[2], self._types.get(k, ""), "unknown") for k in members)
        health = combine(v.health for v in views)
        shown = deciding(views)
        self._views[rs] = RsHealth(
            health, shown.last_check if shown is not None else None, views, self._passive.get(rs)
        )

    def checker_stats(self) -> dict[str, float]:
        st = self.runner.stats
        return {
            "checks": st.checks,
            "late": st.late,
            "timeouts": st.timeouts,
            "errors": st.errors,
            "skipped": st.skipped,  # not made for want of a descriptor (no result: the realserver keeps its state)
        }

    @staticmethod
    def half_open_stats() -> dict[str, dict[str, int]]:
        from healthchecks import synprobe

        try:
            return synprobe.loop_stats(asyncio.get_running_loop())
        except RuntimeError:  # no loop: nothing probed
            return {}

    @staticmethod
    def _retain_probers(marks: set[int]) -> None:
        """Close the half-open probers of marks no check uses any more (a reload removed their probe paths)."""
        from healthchecks import synprobe

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # configured before the loop runs: no prober exists yet
            return
        if n := synprobe.retain_marks(loop, marks):
            log.info("via: vip: closed %d half-open prober(s) of probe paths that are gone", n)

    def _changed(self, key: Any, old: Any, new: Any, result: Any) -> None:
        view = self._check_views.get(key)
        self._check_views[key] = CheckView(
            key[2], self._types.get(key, ""), new.value, view.last_check if view is not None else None
        )
        rs = (key[0], key[1])
        self._refresh_view(rs)
        before = self._rs_state.get(rs, old.value)
        after = self._views[rs].health
        self._rs_state[rs] = after
        if after != before:
            several = len(self._members.get(rs, ())) > 1
            self._on_change(rs, before, after, f"{key[2]}: {result.reason}" if several else result.reason)

    def configure(self, cfg: Config, via: ViaProbes | None = None) -> None:
        """Set the checks; unchanged ones keep their schedule and rise/fall state. KeyError: unknown type.
        ``via``: the probe paths of the ``via: vip`` checks (``ha.via``), whose targets are VIP:port with a mark."""
        from healthchecks.base import Target
        from healthchecks.hysteresis import Health as H
        from healthchecks.runner import CheckSpec

        specs: dict[Hashable, CheckSpec] = {}
        unchecked: set[HealthKey] = set()
        members: dict[HealthKey, tuple[CheckKey, ...]] = {}
        types: dict[CheckKey, str] = {}
        for svc in cfg.services:
            for rs in svc.realservers:
                rkey = (svc.name, rs.ident)
                checks = rs.all_checks
                if not checks:
                    unchecked.add(rkey)
                    continue
                keys = []
                for label, chk in zip(labels(checks), checks, strict=True):
                    key = (svc.name, rs.ident, label)
                    addr = chk.connect_address if chk.connect_address is not None else rs.address
                    through = target_of(via, key, rs) if via is not None else None
                    if through is not None:
                        target = Target(realserver=rs.ident, service=svc.name, **through)
                    else:
                        target = Target(str(addr), chk.connect_port or rs.port, rs.ident, svc.name)
                    keys.append(key)
                    types[key] = chk.type
                    specs[key] = CheckSpec(
                        chk.type,
                        chk.spec,
                        target,
                        chk.interval_s,
                        chk.timeout_s,
                        chk.rise,
                        chk.fall,
                        H.parse(chk.initial_state),
                        chk.fall_interval_s,
                    )
                members[rkey] = tuple(keys)
        self.runner.set_checks(specs)
        self._retain_probers({s.target.mark for s in specs.values() if s.target.mark})
        self.unchecked = unchecked
        self._members, self._types = members, types
        self._weights = {k: w for k, w in self._weights.items() if k in specs}
        # kept checks keep their last result; new ones start in their initial state
        self._check_views = {
            k: CheckView(
                k[2], types[k], self.runner.state(k).value, v.last_check if (v := self._check_views.get(k)) else None
            )
            for k in specs
            if isinstance(k, tuple)
        }
        always = RsHealth("up", LastCheck(True, "no check configured", 0.0))
        self._views = dict.fromkeys(unchecked, always)
        for rkey in members:
            self._refresh_view(rkey)
        self._passive = {k: v for k, v in self._passive.items() if k in members}
        self._rs_state = {rkey: self._views[rkey].health for rkey in members}

    def passive_trip(self, key: HealthKey, reason: str, held: bool) -> bool:
        """Passive health tripped realserver ``key`` (``ha.passive``): all its checks down at once unless ``held``
        (only their ``rise`` brings it back), shown in the status, and its checks run now either way. True if it
        went down."""
        down = False
        if not held:
            for k in self._members.get(key, ()):
                down = self.runner.force_down(k, reason) or down
        prev = self._passive.get(key)
        self._passive[key] = PassiveView(reason, time.time(), prev.trips + 1 if prev is not None else 1, held)
        if key in self._members:
            self._refresh_view(key)
        for k in self._members.get(key, ()):
            self.runner.check_now(k)
        return down

    def is_up(self, key: HealthKey) -> bool:
        view = self._views.get(key)
        return view is not None and view.health == "up"

    async def start(self) -> None:
        await self.runner.start()
        self._sampler = asyncio.get_running_loop().create_task(self._sample_lateness(), name="check-lateness")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        await self.runner.stop()

    async def _sample_lateness(self, every_s: float = 5.0) -> None:
        while True:
            st = self.runner.stats
            self.late.add(time.monotonic(), st.checks, st.late)
            await asyncio.sleep(every_s)

    def late_warning(self) -> str | None:
        return self.late.warning(self.runner.late_after_s)

    def states(self) -> dict[HealthKey, Any]:
        """(service, realserver) -> ``ha.desired.RsHealth`` (with a dynamic weight when a check reports one): the
        AND of the realserver's checks."""
        from ha.desired import RsHealth as DesiredHealth

        out: dict[HealthKey, Any] = {k: DesiredHealth("up") for k in self.unchecked}
        state = self.runner.state
        for rkey, keys in self._members.items():
            out[rkey] = DesiredHealth(combine(state(k).value for k in keys), self._rs_weight(rkey))
        return out

    def check_up_map(self) -> dict[CheckKey, bool | None]:
        """(service, realserver, check) -> up (None: unknown), for the per-check metric."""
        state = self.runner.state
        out: dict[CheckKey, bool | None] = {}
        for keys in self._members.values():
            for k in keys:
                v = state(k).value
                out[k] = None if v == "unknown" else v == "up"
        return out

    def views(self) -> dict[HealthKey, RsHealth]:
        """(service, realserver) -> what the status shows (read-only: the live map, not a copy)."""
        return self._views

    def up_map(self) -> dict[HealthKey, bool | None]:
        return {k: None if v.health == "unknown" else v.health == "up" for k, v in self.states().items()}
