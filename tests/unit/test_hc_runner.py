from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from healthchecks.base import CheckResult, Target
from healthchecks.hysteresis import Health
from healthchecks.registry import Registry
from healthchecks.runner import CheckSpec, Runner, run_check
from tests.lab import await_for


async def until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    return await await_for(cond, timeout, 0.005, what)


class Scripted:
    """A checker whose behaviour per address is set by the test: 'ok', 'fail', 'raise', 'hang'."""

    name: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        self.mode: dict[str, str] = {}
        self.calls: list[str] = []
        self.inflight = 0
        self.max_inflight = 0
        self.hold_s = 0.0
        self.hold: dict[str, float] = {}  # per address, instead of hold_s

    def parse_spec(self, raw: Any) -> Any:
        return tuple(sorted(raw.items()))

    async def check(self, target: Target, spec: Any, timeout_s: float) -> CheckResult:
        self.calls.append(target.address)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            hold = self.hold.get(target.address, self.hold_s)
            if hold:
                await asyncio.sleep(hold)
            mode = self.mode.get(target.address, "ok")
            if mode == "raise":
                raise RuntimeError("boom in checker")
            if mode == "hang":
                await asyncio.Event().wait()
            if mode == "swallow":  # a badly written checker that ignores cancellation
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    return CheckResult(True, "pretends all is well", 0.0)
            return CheckResult(mode == "ok", mode, 0.001)
        finally:
            self.inflight -= 1


@pytest.fixture
def reg() -> tuple[Registry, Scripted]:
    r = Registry()
    s = Scripted()
    r.register("scripted", s)
    return r, s


def cs(addr: str, interval: float = 0.02, rise: int = 1, fall: int = 1, timeout: float = 0.5, **kw: Any) -> CheckSpec:
    return CheckSpec("scripted", (), Target(addr, 80, f"{addr}:80"), interval, timeout, rise, fall, **kw)


async def test_identical_checks_share_one_probe_and_fan_out(reg: tuple[Registry, Scripted]) -> None:
    registry, chk = reg
    runner = Runner(registry, rng=random.Random(1))
    changes: list[tuple[Any, Health, Health]] = []
    runner.subscribe(lambda k, o, n, r: changes.append((k, o, n)))
    results: list[Any] = []
    runner.subscribe_results(lambda k, r: results.append(k))
    runner.set_checks({("web", "a"): cs("127.0.0.2"), ("api", "a"): cs("127.0.0.2", fall=2)})
    assert runner.probe_count == 1
    await runner.start()
    try:
        await until(lambda: len(chk.calls) >= 3)
        chk.mode["127.0.0.2"] = "fail"
        await until(lambda: len(changes) == 2, what="both keys down")
        assert {k for k, _, _ in changes} == {("web", "a"), ("api", "a")}
        assert all(n is Health.DOWN for _, _, n in changes)
        st = runner.status(("api", "a"))
        assert st.state is Health.DOWN and st.last_result is not None and not st.last_result.ok
        assert st.last_failure_s is not None and st.last_success_s is not None
    finally:
        await runner.stop()
    assert set(chk.calls) == {"127.0.0.2"}
    # every result reaches every key that shares the probe
    assert abs(results.count(("web", "a")) - results.count(("api", "a"))) <= 1 and len(results) >= 6


async def test_raising_and_hanging_checkers_do_not_stop_the_others(reg: tuple[Registry, Scripted]) -> None:
    registry, chk = reg
    chk.mode.update({"127.0.0.3": "raise", "127.0.0.4": "hang"})
    runner = Runner(registry, concurrency=2)
    runner.set_checks({k: cs(k, timeout=0.05) for k in ("127.0.0.2", "127.0.0.3", "127.0.0.4")})
    await runner.start()
    try:
        await until(lambda: runner.state("127.0.0.3") is Health.DOWN and runner.state("127.0.0.4") is Health.DOWN)
        n = chk.calls.count("127.0.0.2")
        await until(lambda: chk.calls.count("127.0.0.2") >= n + 5, what="healthy probe keeps running")
        r3 = runner.status("127.0.0.3").last_result
        r4 = runner.status("127.0.0.4").last_result
        assert r3 is not None and "boom in checker" in r3.reason and "RuntimeError" in r3.reason
        assert r4 is not None and r4.reason.startswith("timeout after")
        assert runner.state("127.0.0.2") is Health.UP
        assert runner.stats.errors >= 1 and runner.stats.timeouts >= 1
    finally:
        await runner.stop()


async def test_timeouts_and_errors_are_counted_by_how_the_check_ended_not_by_its_reason(
    reg: tuple[Registry, Scripted],
) -> None:
    registry, chk = reg
    # a checker's own failures whose reasons merely look like the runner's
    chk.mode.update({"127.0.0.5": "timeout after 9s (the server said so)", "127.0.0.6": "checker error: none"})
    runner = Runner(registry)
    runner.set_checks({k: cs(k) for k in ("127.0.0.5", "127.0.0.6")})
    await runner.start()
    try:
        await until(lambda: runner.stats.failed >= 10, what="failed checks")
    finally:
        await runner.stop()
    assert runner.stats.timeouts == 0 and runner.stats.errors == 0


async def test_concurrency_limit_is_respected(reg: tuple[Registry, Scripted]) -> None:
    registry, chk = reg
    chk.hold_s = 0.01
    runner = Runner(registry, concurrency=3)
    runner.set_checks({f"127.0.1.{i}": cs(f"127.0.1.{i}", interval=0.01) for i in range(20)})
    await runner.start()
    try:
        await until(lambda: len(chk.calls) >= 60)
    finally:
        await runner.stop()
    assert chk.max_inflight == 3


class LaunchLog(Runner):
    """A runner that notes how late each probe's checks start."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.lateness: list[tuple[str, float]] = []

    def _launch(self, probe: Any, now: float) -> None:
        self.lateness.append((probe.target.address, now - probe.due))
        super()._launch(probe, now)


async def test_late_checks_are_counted(reg: tuple[Registry, Scripted]) -> None:
    registry, chk = reg
    # one slot; a holds it far longer than late_after_s, b's checks end at once: b waits for a and starts late,
    # a (whose next run slips to the end of its long check) never waits more than a sweep or two
    chk.hold["127.0.0.2"] = 0.6
    runner = LaunchLog(registry, concurrency=1, late_after_s=0.15)
    runner.set_checks({"a": cs("127.0.0.2", interval=0.01), "b": cs("127.0.0.3", interval=0.01)})
    await runner.start()
    try:
        await until(lambda: runner.stats.late >= 2)
    finally:
        await runner.stop()
    assert runner.stats.max_lateness_s > 0.05
    late = [addr for addr, lateness in runner.lateness if lateness > runner.late_after_s]
    assert late == ["127.0.0.3"] * len(late) and len(late) == runner.stats.late  # only b started late
    assert runner.stats.max_lateness_s == max(lateness for _, lateness in runner.lateness)


async def test_reload_keeps_schedule_and_state_of_unchanged_checks(reg: tuple[Registry, Scripted]) -> None:
    registry, chk = reg
    chk.mode["127.0.0.2"] = "fail"
    runner = Runner(registry)
    runner.set_checks({"a": cs("127.0.0.2"), "b": cs("127.0.0.3"), "c": cs("127.0.0.4")})
    await runner.start()
    try:
        await until(lambda: runner.state("a") is Health.DOWN)
        probe_a = runner._probes[cs("127.0.0.2").probe_id]
        total = runner.status("a").total_failures
        # reload: a unchanged, b gets new rise/fall (same probe), c removed, d added
        runner.set_checks({"a": cs("127.0.0.2"), "b": cs("127.0.0.3", rise=3, fall=3), "d": cs("127.0.0.5")})
        assert runner._probes[cs("127.0.0.2").probe_id] is probe_a
        assert runner.state("a") is Health.DOWN and runner.status("a").total_failures >= total
        assert sorted(map(str, runner.keys())) == ["a", "b", "d"] and runner.probe_count == 3
        assert runner._hyst["b"].fall == 3
        n = chk.calls.count("127.0.0.4")
        await until(lambda: chk.calls.count("127.0.0.5") >= 2)
        assert chk.calls.count("127.0.0.4") == n
        # a new interval is a new probe, but the key keeps its health until the new probe says otherwise
        runner.set_checks({"a": cs("127.0.0.2", interval=0.03), "b": cs("127.0.0.3", rise=3, fall=3)})
        assert runner._probes.get(cs("127.0.0.2").probe_id) is None and runner.probe_count == 2
        assert runner.state("a") is Health.DOWN
    finally:
        await runner.stop()


async def test_first_runs_are_spread_over_the_interval(reg: tuple[Registry, Scripted]) -> None:
    registry, _ = reg
    runner = Runner(registry, rng=random.Random(7))
    runner.set_checks({i: cs(f"127.0.2.{i}", interval=10.0) for i in range(50)})
    await runner.start()
    try:
        now = asyncio.get_running_loop().time()
        offsets = sorted(p.due - now for p in runner._probes.values())
        assert -0.5 < offsets[0] and offsets[-1] < 10.0
        assert offsets[-1] - offsets[0] > 5.0  # spread, not synchronised
        assert len({round(o, 3) for o in offsets}) > 45
    finally:
        await runner.stop()


async def test_callback_errors_are_contained_and_unsubscribe_works(reg: tuple[Registry, Scripted]) -> None:
    registry, chk = reg
    chk.mode["127.0.0.2"] = "fail"
    runner = Runner(registry)
    seen: list[Any] = []

    def bad(*a: Any) -> None:
        raise ValueError("callback bug")

    runner.subscribe(bad)
    unsub = runner.subscribe(lambda k, o, n, r: seen.append((k, n, r.reason)))
    runner.set_checks({"a": cs("127.0.0.2"), "b": cs("127.0.0.3", initial_state=Health.UNKNOWN)})
    await runner.start()
    try:
        await until(lambda: len(seen) == 2)
        assert sorted(seen) == [("a", Health.DOWN, "fail"), ("b", Health.UP, "ok")]
        unsub()
        chk.mode["127.0.0.2"] = "ok"
        await until(lambda: runner.state("a") is Health.UP)
        assert len(seen) == 2
    finally:
        await runner.stop()


async def test_a_checker_that_swallows_the_timeout_still_fails_and_keeps_running(
    reg: tuple[Registry, Scripted],
) -> None:
    registry, chk = reg
    chk.mode["127.0.0.6"] = "swallow"
    runner = Runner(registry)
    runner.set_checks({"s": cs("127.0.0.6", timeout=0.05)})
    await runner.start()
    try:
        await until(lambda: chk.calls.count("127.0.0.6") >= 3, what="probe keeps running")
        res = runner.status("s").last_result
        assert res is not None and not res.ok and res.reason == "timeout after 0.05s"
        assert runner.state("s") is Health.DOWN
    finally:
        await runner.stop()


def test_unknown_type_is_rejected_before_anything_changes(reg: tuple[Registry, Scripted]) -> None:
    registry, _ = reg
    runner = Runner(registry)
    runner.set_checks({"a": cs("127.0.0.2")})
    bad = CheckSpec("nosuch", None, Target("127.0.0.9", 1))
    with pytest.raises(KeyError, match="nosuch"):
        runner.set_checks({"b": bad})
    assert runner.keys() == ["a"]


async def test_run_check_turns_a_wrong_return_type_into_a_failure() -> None:
    class Wrong:
        name: ClassVar[str] = "wrong"

        def parse_spec(self, raw: Any) -> Any:
            return None

        async def check(self, target: Target, spec: Any, timeout_s: float) -> Any:
            return True

    res = await run_check(Wrong(), Target("127.0.0.1", 1), None, 1.0)
    assert not res.ok and "not a CheckResult" in res.reason


def test_sharing_respects_the_realserver_identity_and_exec_services() -> None:
    from healthchecks.registry import default_registry

    reg = default_registry()
    runner = Runner(reg)
    file_spec = reg.get("file").parse_spec({"directory": "/nonexistent"})
    exec_spec = reg.get("exec").parse_spec({"command": ["/bin/true"]})
    same_addr = Target("127.0.0.1", 80, "10.0.0.1:80", "web")
    runner.set_checks(
        {
            # one connect_address for two realservers: the file check must not merge them
            "f1": CheckSpec("file", file_spec, same_addr),
            "f2": CheckSpec("file", file_spec, Target("127.0.0.1", 80, "10.0.0.2:80", "web")),
            # one realserver in two services: merged for file, separate for exec (it sees the service)
            "f3": CheckSpec("file", file_spec, Target("127.0.0.1", 80, "10.0.0.1:80", "api")),
            "e1": CheckSpec("exec", exec_spec, same_addr),
            "e2": CheckSpec("exec", exec_spec, Target("127.0.0.1", 80, "10.0.0.1:80", "api")),
        }
    )
    assert runner.probe_count == 4
    assert runner._key_probe["f1"] == runner._key_probe["f3"] != runner._key_probe["f2"]
    assert runner._key_probe["e1"] != runner._key_probe["e2"]


class CallbackScripted:
    """A callback checker (``begin``) whose behaviour per address is set by the test: 'ok' (done at once),
    'later' (done on the next loop iteration), 'hold' (done after 10 ms), 'long' (300 ms), 'fail', 'hang' (never
    done), 'raise'."""

    name: ClassVar[str] = "cb"

    def __init__(self) -> None:
        self.mode: dict[str, str] = {}
        self.calls: list[str] = []
        self.cancelled: list[str] = []
        self.inflight = 0
        self.max_inflight = 0
        self.late_done = 0  # done called after cancel: must stay 0

    def parse_spec(self, raw: Any) -> Any:
        return None

    async def check(self, target: Target, spec: Any, timeout_s: float) -> CheckResult:
        raise AssertionError("the runner must use begin")

    def begin(self, target: Target, spec: Any, timeout_s: float, done: Callable[[CheckResult], None]) -> Any:
        addr = target.address
        self.calls.append(addr)
        mode = self.mode.get(addr, "ok")
        loop = asyncio.get_running_loop()
        if mode == "raise":
            raise RuntimeError("boom in begin")
        if mode in ("ok", "fail"):
            done(CheckResult(mode == "ok", mode, 0.0))
            return None
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        state = {"live": True}

        def finish() -> None:
            if not state["live"]:
                self.late_done += 1
                return
            state["live"] = False
            self.inflight -= 1
            done(CheckResult(True, mode, 0.001))

        handle = None
        if mode == "later":
            handle = loop.call_soon(finish)
        elif mode == "hold":
            handle = loop.call_later(0.01, finish)
        elif mode == "long":
            handle = loop.call_later(0.3, finish)

        def cancel() -> None:
            self.cancelled.append(addr)
            if state["live"]:
                state["live"] = False
                self.inflight -= 1
            if handle is not None:
                handle.cancel()

        return cancel


@pytest.fixture
def cbreg() -> tuple[Registry, CallbackScripted]:
    r = Registry()
    c = CallbackScripted()
    r.register("cb", c)
    return r, c


def cbs(addr: str, interval: float = 0.02, timeout: float = 0.5) -> CheckSpec:
    return CheckSpec("cb", None, Target(addr, 80, f"{addr}:80"), interval, timeout, 1, 1)


async def test_callback_checks_results_timeouts_and_errors(cbreg: tuple[Registry, CallbackScripted]) -> None:
    registry, chk = cbreg
    chk.mode.update({"127.0.3.2": "later", "127.0.3.3": "fail", "127.0.3.4": "hang", "127.0.3.5": "raise"})
    runner = Runner(registry)
    runner.set_checks(
        {a: cbs(a, timeout=0.05) for a in ("127.0.3.1", "127.0.3.2", "127.0.3.3", "127.0.3.4", "127.0.3.5")}
    )
    await runner.start()
    try:
        await until(lambda: chk.cancelled.count("127.0.3.4") >= 3, what="hung checks cancelled at their deadline")
        await until(lambda: all(chk.calls.count(a) >= 5 for a in ("127.0.3.1", "127.0.3.2", "127.0.3.5")))
        assert runner.state("127.0.3.1") is Health.UP and runner.state("127.0.3.2") is Health.UP
        assert runner.state("127.0.3.3") is Health.DOWN and runner.state("127.0.3.4") is Health.DOWN
        r4 = runner.status("127.0.3.4").last_result
        r5 = runner.status("127.0.3.5").last_result
        assert r4 is not None and r4.reason == "timeout after 0.05s"
        assert r5 is not None and not r5.ok and "boom in begin" in r5.reason
        assert runner.stats.timeouts >= 3 and runner.stats.errors >= 1
    finally:
        await runner.stop()
    assert chk.late_done == 0 and chk.inflight == 0


async def test_callback_checks_respect_the_concurrency_limit(cbreg: tuple[Registry, CallbackScripted]) -> None:
    registry, chk = cbreg
    runner = Runner(registry, concurrency=2)
    addrs = [f"127.0.4.{i}" for i in range(10)]
    chk.mode.update(dict.fromkeys(addrs, "hold"))
    runner.set_checks({a: cbs(a, interval=0.01) for a in addrs})
    await runner.start()
    try:
        await until(lambda: len(chk.calls) >= 40)
        assert all(chk.calls.count(a) >= 1 for a in addrs)  # waiting probes all get their turn
    finally:
        await runner.stop()
    assert chk.max_inflight == 2 and chk.inflight == 0


async def test_removing_or_stopping_cancels_running_callback_checks(cbreg: tuple[Registry, CallbackScripted]) -> None:
    registry, chk = cbreg
    chk.mode.update({"127.0.5.1": "hang", "127.0.5.2": "hang"})
    runner = Runner(registry)
    runner.set_checks({"a": cbs("127.0.5.1", timeout=30), "b": cbs("127.0.5.2", timeout=30)})
    await runner.start()
    try:
        await until(lambda: chk.inflight == 2)
        runner.set_checks({"b": cbs("127.0.5.2", timeout=30)})
        assert chk.cancelled == ["127.0.5.1"] and chk.inflight == 1
    finally:
        await runner.stop()
    assert sorted(chk.cancelled) == ["127.0.5.1", "127.0.5.2"] and chk.inflight == 0
    assert runner.stats.timeouts == 0 and chk.late_done == 0


async def test_a_long_queue_of_checks_that_end_at_once_does_not_recurse(
    cbreg: tuple[Registry, CallbackScripted],
) -> None:
    registry, chk = cbreg
    chk.mode["127.0.6.1"] = "long"  # holds the only slot for 300 ms while the others queue up behind it
    runner = Runner(registry, concurrency=1)
    quick = [f"127.0.{7 + i // 250}.{i % 250}" for i in range(3000)]
    checks: dict[Any, CheckSpec] = {a: cbs(a, interval=0.3) for a in quick}
    checks["long"] = cbs("127.0.6.1", interval=0.2, timeout=5.0)
    runner.set_checks(checks)
    await runner.start()
    try:
        await until(lambda: chk.calls.count("127.0.6.1") >= 3 and len(chk.calls) >= 9000)
        assert runner.stats.errors == 0 and all(runner.state(a) is Health.UP for a in quick)
    finally:
        await runner.stop()


async def test_a_probe_far_behind_slips_instead_of_running_back_to_back(
    cbreg: tuple[Registry, CallbackScripted],
) -> None:
    registry, chk = cbreg
    chk.mode["127.0.8.1"] = "long"  # holds the only slot for 300 ms: the quick probe falls several intervals behind
    runner = Runner(registry, concurrency=1)
    interval = 0.05
    far = interval * (1 + 2 * runner.jitter)  # behind by more than any jittered interval
    runner.set_checks({"long": cbs("127.0.8.1", interval=0.2, timeout=5.0), "quick": cbs("127.0.8.2", interval)})
    quick = runner._probes[cbs("127.0.8.2", interval).probe_id]
    runs: list[tuple[float, float]] = []  # (due, started) of each quick check, seen when its result arrives

    def seen(key: Any, res: CheckResult) -> None:
        if key == "quick":
            runs.append((quick.due, quick.started))

    runner.subscribe_results(seen)
    await runner.start()
    try:
        await until(
            lambda: sum(1 for due, started in runs[:-1] if started - due > far) >= 3,
            what="quick checks that started more than an interval late",
        )
    finally:
        await runner.stop()
    for (due, started), (next_due, _) in itertools.pairwise(runs):
        if started - due > far:  # far behind: the next check is an interval after this start, not at once
            assert next_due >= started + interval * (1 - runner.jitter) - 1e-9
