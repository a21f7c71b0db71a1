"""DNS check over UDP to the realserver (dnspython builds and parses the messages).

Keys: ``name`` (required), ``qtype`` (A), ``expect`` (regular expression that some answer's text must match),
``expect_values`` (every listed value must be among the answers), ``rcode`` (NOERROR), ``recursion`` (true: RD set).
The target port defaults to 53. The runner's hard timeout bounds the wait for a reply.

dnspython is imported when a DNS check is configured (parse_spec), not when the checker is registered: a daemon
without DNS checks does not carry it (about 1.5 MiB).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from healthchecks import sockio
from healthchecks.base import CheckResult, Target
from healthchecks.spec import SpecReader
from healthchecks.tcp import family_of, sockaddr


@dataclass(frozen=True)
class DnsSpec:
    name: str
    qtype: str = "A"
    expect: re.Pattern[str] | None = None
    expect_values: tuple[str, ...] = ()
    rcode: str = "NOERROR"
    recursion: bool = True


def _norm(value: str) -> str:
    return value.strip().rstrip(".").lower()


class DnsChecker:
    name: ClassVar[str] = "dns"

    def parse_spec(self, raw: Mapping[str, Any]) -> DnsSpec:
        import dns.exception
        import dns.name
        import dns.rcode
        import dns.rdatatype

        r = SpecReader(raw, {"name", "qtype", "expect", "expect_values", "rcode", "recursion"}, "dns")
        name = r.text("name", required=True)
        if name is not None:
            try:
                dns.name.from_text(name)
            except dns.exception.DNSException as e:
                r.error(f"not a valid domain name ({e}): {name!r}", "name")
        qtype = (r.text("qtype", "A") or "A").upper()
        try:
            dns.rdatatype.from_text(qtype)
        except dns.exception.DNSException:
            r.error(f"unknown record type {qtype!r}; e.g. A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT", "qtype")
        rcode = (r.text("rcode", "NOERROR") or "NOERROR").upper()
        try:
            dns.rcode.from_text(rcode)
        except dns.exception.DNSException:
            r.error(f"unknown rcode {rcode!r}; e.g. NOERROR, NXDOMAIN, SERVFAIL, REFUSED", "rcode")
        spec = DnsSpec(
            name or ".", qtype, r.regex("expect"), r.str_list("expect_values"), rcode, r.flag("recursion", True)
        )
        r.finish()
        return spec

    async def check(self, target: Target, spec: DnsSpec, timeout_s: float) -> CheckResult:
        import dns.exception
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdatatype

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        q = dns.message.make_query(spec.name, spec.qtype)
        if not spec.recursion:
            q.flags &= ~dns.flags.RD
        sock = socket.socket(family_of(target.address), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # a connected socket, so that an ICMP port unreachable fails the check at once
            sock.connect(sockaddr(target.address, target.port or 53))
            await loop.sock_sendall(sock, q.to_wire())
            while True:
                wire = await loop.sock_recv(sock, 65535)
                try:
                    resp = dns.message.from_wire(wire)
                except dns.exception.DNSException as e:
                    return CheckResult(False, f"bad DNS reply: {e}", loop.time() - t0)
                if q.is_response(resp):
                    break  # anything else (stale id, other question) is ignored
        except ConnectionRefusedError:
            return CheckResult(False, "ICMP port unreachable", loop.time() - t0)
        except OSError as e:
            return sockio.failed(e, loop.time() - t0)
        finally:
            sock.close()
        rcode = dns.rcode.to_text(resp.rcode())
        if rcode != spec.rcode:
            return CheckResult(False, f"rcode {rcode}, expected {spec.rcode}", loop.time() - t0)
        want = dns.rdatatype.from_text(spec.qtype)
        answers = [rd.to_text() for rrset in resp.answer if rrset.rdtype == want for rd in rrset]
        if spec.expect is not None and not any(spec.expect.search(a) for a in answers):
            return CheckResult(
                False, f"no answer matches {spec.expect.pattern!r} (got {answers[:5]})", loop.time() - t0
            )
        missing = {_norm(v) for v in spec.expect_values} - {_norm(a) for a in answers}
        if missing:
            return CheckResult(False, f"missing answers {sorted(missing)} (got {answers[:5]})", loop.time() - t0)
        return CheckResult(True, f"{rcode}, {len(answers)} answers", loop.time() - t0)
