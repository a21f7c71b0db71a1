"""The status page (``GET /ui``) in a real headless browser (Debian's ``chromium``), driven through the DevTools
protocol over a pipe (``--remote-debugging-pipe``), both the browser and ``lvs-ha run`` in one lab namespace with the
TCP API on 127.0.0.1 there. The page loads with the token from its address's fragment, lists the realservers as up
with drain buttons (this caller may write), escapes a hostile service name, and shows a realserver going down within
a second of the daemon's own event (the event's time against the moment the page applied it). A screenshot is kept:
in ``$LVS_HA_ARTIFACTS`` if set, else in the test's tmp dir; its path is printed."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ha.cli.ctl import request
from tests.integration.test_events import RS_PORTS, Director
from tests.lab import LVS_HA, Lab, wait_for
from tests.vrrp_helpers import NET

pytestmark = [pytest.mark.root, pytest.mark.slow]

TOKEN = "ui-test-token-0123456789abcdef"
PORT = 9080
HOSTILE = 'web<img src=x onerror="window.pwned=1">\u2028'


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """A headless chromium in ``host``'s namespace, spoken to over the DevTools pipe (fd 3 in, fd 4 out; messages
    are JSON ended by a NUL)."""

    def __init__(self, lab: Lab, host: Any, exe: str, profile: Path) -> None:
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # out of the way of 3 and 4, where the browser expects them
        child_in, child_out = fcntl.fcntl(to_r, fcntl.F_DUPFD, 20), fcntl.fcntl(from_w, fcntl.F_DUPFD, 20)
        os.close(to_r)
        os.close(from_w)

        def fds() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        with open(profile.parent / "chromium.log", "wb") as log:
            self.proc = lab.spawn(
                host,
                [
                    exe,
                    "--headless=new",
                    "--no-sandbox",  # root
                    "--remote-debugging-pipe",
                    f"--user-data-dir={profile}",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--window-size=1400,900",
                    "about:blank",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=fds,
                pass_fds=(3, 4),
            )
        os.close(child_in)
        os.close(child_out)
        self.w, self.r = to_w, from_r
        self.buf = b""
        self.next_id = 0
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []  # what the browser sent on its own (no id)

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0, **kw: Any) -> Any:
        self.next_id += 1
        want = self.next_id
        msg: dict[str, Any] = {"id": want, "method": method, "params": params or {}}
        if kw.get("session", True) and self.session is not None:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        reply = self._receive(lambda m: m.get("id") == want, timeout, method)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        return self._receive(lambda m: m.get("method") == method, timeout, method)

    def _receive(self, match: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, _, self.buf = self.buf.partition(b"\0")
                msg = json.loads(raw)
                if match(msg):
                    return dict(msg)
                if "id" not in msg:
                    self.events.append(msg)
                    del self.events[:-200]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"nothing for {what} within {timeout}s")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError("the browser closed its DevTools pipe")
                self.buf += chunk

    def open(self, url: str, intercept: str | None = None) -> None:
        """A new tab at ``url``; with ``intercept``, requests matching that pattern wait for ``fulfill``."""
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)
        self.session = attached["sessionId"]
        self.call("Page.enable")
        if intercept:
            self.call("Fetch.enable", {"patterns": [{"urlPattern": intercept, "requestStage": "Request"}]})
        self.call("Page.navigate", {"url": url})

    def fulfill(self, body: dict[str, Any]) -> str:
        """Answer the next intercepted request with ``body`` (JSON); its URL."""
        paused = self.wait_event("Fetch.requestPaused")["params"]
        self.call(
            "Fetch.fulfillRequest",
            {
                "requestId": paused["requestId"],
                "responseCode": 200,
                "responseHeaders": [{"name": "Content-Type", "value": "application/json"}],
                "body": base64.b64encode(json.dumps(body).encode()).decode(),
            },
        )
        return str(paused["request"]["url"])

    def eval(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in res:
            return None
        return res["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        for fd in (self.w, self.r):
            try:
                os.close(fd)
            except OSError:
                pass


PAGE_STATE = """JSON.stringify({
  connected: !!(window.lvsHa && window.lvsHa.connected),
  canWrite: !!(window.lvsHa && window.lvsHa.canWrite),
  applied: window.lvsHa ? window.lvsHa.applied : {},
  pwned: window.pwned === 1,
  images: document.images.length,
  services: [...document.querySelectorAll('#services tbody tr')].map(tr => tr.cells[0].textContent),
  rows: [...document.querySelectorAll('#realservers tbody tr')].map(tr => ({
    service: tr.dataset.service, realserver: tr.dataset.realserver,
    health: tr.querySelector('td.health').textContent,
    why: tr.cells[9].textContent,
    buttons: [...tr.querySelectorAll('button')].map(b => b.textContent),
  })),
})"""


def test_status_page_in_a_real_browser(lab: Lab, tmp_path: Path) -> None:
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed (Debian package chromium; deploy/install-deps.sh installs it)")
    host = lab.host("d1", [f"{NET}.11/24"])
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    api = {"listen": f"127.0.0.1:{PORT}", "token_file": str(token_file)}
    d = Director(lab, host, tmp_path, api=api, service_name=HOSTILE)
    d.start()
    profile = tmp_path / "profile"
    profile.mkdir()
    browser = Browser(lab, host, exe, profile)
    artifacts = Path(os.environ.get("LVS_HA_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        wait_for(lambda: all(d.health(p) == "up" for p in RS_PORTS), timeout=30, what="both realservers up")
        browser.open(f"http://127.0.0.1:{PORT}/ui#token={TOKEN}")

        def state() -> dict[str, Any]:
            raw = browser.eval(PAGE_STATE)
            return json.loads(raw) if raw else {}

        def shown(port: int, health: str) -> bool:
            st = state()
            return st.get("connected") is True and any(
                r["realserver"] == f"127.0.0.1:{port}" and r["health"] == health for r in st.get("rows", [])
            )

        wait_for(lambda: all(shown(p, "up") for p in RS_PORTS), timeout=30, what="the page listing both up")
        st = state()
        assert st["canWrite"] is True
        assert all(r["buttons"] == ["drain"] for r in st["rows"]), st["rows"]
        assert st["services"] == [HOSTILE] and {r["service"] for r in st["rows"]} == {HOSTILE}
        assert st["images"] == 0 and st["pwned"] is False  # the name was text, not markup

        rs2 = f"127.0.0.1:{RS_PORTS[1]}"
        d.unserve(RS_PORTS[1])
        wait_for(lambda: shown(RS_PORTS[1], "down"), timeout=15, interval=0.05, what="the page showing it down")
        # the rest of the row (weight, why) follows from the status the page reads again after the event
        wait_for(
            lambda: any(r["realserver"] == rs2 and r["why"] != "up" for r in state().get("rows", [])),
            what="the row's weight and why brought up to date",
        )
        shot = browser.screenshot(artifacts / "lvs-ha-ui.png")
        print(f"\nscreenshot of the status page: {shot}")
        assert shot.stat().st_size > 10_000

        # the daemon's own event for it, and when the page applied it
        last = request(d.sock, "GET", "/v1/whoami")["last_seq"]
        r = d.cli("events", "--since", "0", "--json", "--count", str(last), timeout=10)
        assert r.returncode == 0, r.stderr
        events = [json.loads(x) for x in r.stdout.splitlines()]
        down = next(
            ev for ev in events if ev.get("kind") == "realserver" and ev["realserver"] == rs2 and ev["new"] == "down"
        )
        at = datetime.fromisoformat(down["time"].replace("Z", "+00:00")).timestamp()
        applied_ms = state()["applied"].get(str(down["seq"]))
        assert applied_ms is not None, "the page did not apply the event (it re-read the status instead)"
        delay = applied_ms / 1000 - at
        print(f"the page showed the realserver down {delay * 1000:.0f} ms after the daemon's event")
        assert -0.05 < delay < 1.0

        # lvs-ha events over the TCP API too (what a remote operator uses), from inside the namespace
        r = host.run(
            LVS_HA,
            "events",
            "--url",
            f"http://127.0.0.1:{PORT}",
            "--token-file",
            str(token_file),
            "--since",
            str(down["seq"] - 1),
            "--count",
            "1",
            timeout=20,
        )
        assert f"realserver {HOSTILE[:3]}" in r.stdout and f"{rs2} up -> down" in r.stdout, r.stdout
        r = host.run(LVS_HA, "events", "--url", f"http://127.0.0.1:{PORT}", "--count", "1", check=False, timeout=20)
        assert r.returncode == 2 and "a valid bearer token is required" in r.stderr, r.stderr

        # a drain from the page's own button: the existing POST /v1/drain, then the row says so
        browser.eval(
            "[...document.querySelectorAll('#realservers tbody tr')]"
            f".find(tr => tr.dataset.realserver === '{rs2}').querySelector('button').click()"
        )
        wait_for(
            lambda: any(r["realserver"] == rs2 and r["buttons"] == ["enable"] for r in state()["rows"]),
            what="the drained row with an enable button",
        )
        assert any(rs["drained"] for svc in d.status()["services"] for rs in svc["realservers"])

        # a caller the daemon says may not write gets the same page without buttons (the API lets every caller it
        # admits write today; the page follows whatever /v1/whoami answers, here answered by the test)
        browser.open(f"http://127.0.0.1:{PORT}/ui#token={TOKEN}", intercept="*/v1/whoami*")
        url = browser.fulfill({"caller": "remote=127.0.0.1", "can_write": False, "node": "d1", "last_seq": 0})
        assert url.endswith("/v1/whoami")
        wait_for(lambda: len(state().get("rows", [])) == 2 and state()["connected"], what="the read-only page")
        st = state()
        assert st["canWrite"] is False and all(r["buttons"] == [] for r in st["rows"]), st["rows"]
    finally:
        lab.stop(browser.proc)
        browser.close()
        d.stop()
