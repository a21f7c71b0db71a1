from __future__ import annotations

from typing import Any

import pytest

from healthchecks.base import SpecError, SpecErrors
from healthchecks.registry import default_registry

REG = default_registry()


def parse(kind: str, raw: dict[str, Any]) -> Any:
    return REG.get(kind).parse_spec(raw)


def errors(kind: str, raw: dict[str, Any]) -> list[SpecError]:
    with pytest.raises((SpecError, SpecErrors)) as ei:
        parse(kind, raw)
    e = ei.value
    return e.errors if isinstance(e, SpecErrors) else [e]  # type: ignore[union-attr]


def test_all_builtins_are_registered_through_entry_points() -> None:
    assert set(REG.types()) >= {"tcp", "http", "https", "udp", "dns", "ping", "exec", "file", "smtp"}
    assert REG.load_errors == {}


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("tcp", {}),
        ("tcp", {"send": "PING\\r\\n", "expect": "^\\+PONG"}),
        ("tcp", {"send_hex": "00ff", "expect_hex": "01"}),
        (
            "http",
            {
                "path": "/healthz",
                "host": "www.example.com",
                "expect_status": ["200", "300-399"],
                "expect_body": "ok",
                "headers": {"X-A": "1"},
                "method": "post",
                "body": "x",
            },
        ),
        ("https", {"verify": False}),
        ("udp", {"payload_hex": "0a0b", "expect": "pong"}),
        ("dns", {"name": "example.com", "qtype": "aaaa", "expect_values": ["::1"]}),
        ("ping", {"size": 8}),
        ("exec", {"command": ["/bin/true", "{address}"], "env": {"A": "b"}}),
        ("file", {"directory": "/run/maint"}),
        ("smtp", {"helo_name": "dir1.example.com"}),
    ],
)
def test_valid_specs_are_frozen_and_hashable(kind: str, raw: dict[str, Any]) -> None:
    spec = parse(kind, raw)
    assert hash(spec) == hash(parse(kind, raw))
    assert spec == parse(kind, raw)


def test_parsed_values() -> None:
    s = parse("http", {"expect_status": ["200", "300-399"], "method": "head"})
    assert s.expect_status == ((200, 200), (300, 399)) and s.method == "HEAD"
    assert s.status_ok(302) and not s.status_ok(404)
    assert parse("tcp", {"send": "PING\\r\\n"}).send == b"PING\r\n"
    assert parse("udp", {"payload_hex": "0a 0b"}).payload == b"\n\x0b"
    assert parse("udp", {"expect": "x"}).require_reply is True
    assert parse("exec", {"command": ["/bin/x", "-p", 5]}).command == ("/bin/x", "-p", "5")


@pytest.mark.parametrize(
    ("kind", "raw", "key", "text"),
    [
        ("tcp", {"bogus": 1}, "bogus", "valid keys: expect, expect_hex, half_open, max_reply, send, send_hex"),
        ("tcp", {"expect": "("}, "expect", "regular expression"),
        ("tcp", {"send": "a", "send_hex": "00"}, "send_hex", "either"),
        ("tcp", {"send_hex": "zz"}, "send_hex", "hexadecimal"),
        ("http", {"expect_status": ["2xx"]}, "expect_status", "range such as 200-299"),
        ("http", {"expect_status": ["299-200"]}, "expect_status", "low <= high"),
        ("http", {"path": "healthz"}, "path", "starting with /"),
        ("http", {"method": "BREW"}, "method", "GET"),
        ("http", {"verify": False}, "verify", "valid keys"),  # TLS keys only for https
        ("https", {"ca_file": "/nonexistent/ca.pem"}, "ca_file", "cannot load"),
        ("https", {"verify": "no"}, "verify", "true or false"),
        ("udp", {"expect": "x", "require_reply": False}, "require_reply", "needs a reply"),
        ("dns", {}, "name", "required"),
        ("dns", {"name": "a.example", "qtype": "BOGUS"}, "qtype", "record type"),
        ("dns", {"name": "a.example", "rcode": "MAYBE"}, "rcode", "NXDOMAIN"),
        ("ping", {"size": -1}, "size", "0..65000"),
        ("exec", {"command": "/bin/true --x"}, "command", "no shell"),
        ("exec", {}, "command", "required"),
        ("file", {}, None, "directory"),
        ("smtp", {"helo_name": "bad name!"}, "helo_name", "host name"),
    ],
)
def test_bad_specs_name_the_key_and_what_is_valid(kind: str, raw: dict[str, Any], key: str | None, text: str) -> None:
    errs = errors(kind, raw)
    assert any(e.key == key and text in e.message for e in errs), [str(e) for e in errs]


def test_all_problems_are_reported_together() -> None:
    errs = errors("http", {"path": "x", "method": "BREW", "nope": 1})
    assert {e.key for e in errs} == {"path", "method", "nope"}


def test_https_without_verification_is_allowed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="healthchecks.http"):
        spec = parse("https", {"verify": False})
    assert spec.verify is False
    assert any("verify: false" in r.getMessage() for r in caplog.records)
