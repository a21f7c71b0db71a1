"""The TCP API over TLS (``node.api.tls``) and the metrics listener (``node.api.metrics_listen``), against a real
``lvs-ha run``: ``lvs-ha status --url https://...`` works with the token and the CA; plain HTTP, a wrong CA, a
missing client certificate (with ``client_ca_file``) are refused; a client that never sends its ClientHello is
closed within the request timeout; the metrics listener serves /metrics and /healthz without a token and nothing
else, while the TCP API still wants the token."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from ha.api import Limits
from tests.integration.tlsdaemon import TOKEN, Daemon, secret


class Pki:
    def __init__(self, d: Path) -> None:
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.client_ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = d / "server.pem"
        self.key = secret(d / "server.key", server.private_key_pem.bytes())
        self.cert.write_bytes(b"".join(c.bytes() for c in server.cert_chain_pems))
        self.ca_file = d / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.other_ca_file = d / "other-ca.pem"
        self.other_ca.cert_pem.write_to_path(str(self.other_ca_file))
        self.client_ca_file = d / "client-ca.pem"
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_file))
        client = self.client_ca.issue_cert("operator@example.org")
        self.client_cert = d / "client.pem"
        client.private_key_and_cert_chain_pem.write_to_path(str(self.client_cert))
        stranger = self.other_ca.issue_cert("stranger@example.org")
        self.stranger_cert = d / "stranger.pem"
        stranger.private_key_and_cert_chain_pem.write_to_path(str(self.stranger_cert))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("tls"),
        api_extra=f"""\
    tls:
      cert_file: {pki.cert}
      key_file: {pki.key}
    metrics_listen: '127.0.0.1:{{metrics_port}}'
""",
    )
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def mtls(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Daemon]:
    d = Daemon(
        tmp_path_factory.mktemp("mtls"),
        api_extra=f"""\
    tls:
      cert_file: {pki.cert}
      key_file: {pki.key}
      client_ca_file: {pki.client_ca_file}
""",
    )
    try:
        d.start()
        yield d
    finally:
        d.stop()


def url(d: Daemon) -> str:
    return f"https://127.0.0.1:{d.api_port}"


def test_status_over_tls_with_the_token(daemon: Daemon, pki: Pki) -> None:
    r = daemon.cli("status", "--url", url(daemon), "--token-file", str(daemon.token_file), "--cacert", str(pki.ca_file))
    assert r.returncode == 0, r.stderr
    assert "web" in r.stdout
    r = daemon.cli(
        "status", "--json", "--url", url(daemon), "--token-file", str(daemon.token_file), "--cacert", str(pki.ca_file)
    )
    assert r.returncode == 0 and '"services"' in r.stdout, r.stderr
    # the name is checked too: "localhost" is in the certificate, a name that is not is refused
    r = daemon.cli(
        "status",
        "--url",
        f"https://localhost:{daemon.api_port}",
        "--token-file",
        str(daemon.token_file),
        "--cacert",
        str(pki.ca_file),
    )
    assert r.returncode == 0, r.stderr


def test_without_the_token_tls_is_not_enough(daemon: Daemon, pki: Pki) -> None:
    r = daemon.cli("status", "--url", url(daemon), "--cacert", str(pki.ca_file))
    assert r.returncode == 2 and "bearer token" in r.stderr, (r.returncode, r.stderr)


def test_a_wrong_ca_is_refused(daemon: Daemon, pki: Pki) -> None:
    r = daemon.cli(
        "status", "--url", url(daemon), "--token-file", str(daemon.token_file), "--cacert", str(pki.other_ca_file)
    )
    assert r.returncode == 2 and "not trusted" in r.stderr, (r.returncode, r.stderr)


def test_plain_http_to_the_tls_port_gets_nothing(daemon: Daemon) -> None:
    before = daemon.metric("lvs_ha_api_connections_refused_total", reason="tls_handshake")
    c = http.client.HTTPConnection("127.0.0.1", daemon.api_port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        c.request("GET", "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
        c.getresponse()
    c.close()
    r = daemon.cli("status", "--url", f"http://127.0.0.1:{daemon.api_port}", "--token-file", str(daemon.token_file))
    assert r.returncode == 2, r.stdout
    after = daemon.metric("lvs_ha_api_connections_refused_total", reason="tls_handshake")
    assert after >= before + 2


def test_a_client_that_never_says_hello_is_closed_within_the_request_timeout(daemon: Daemon) -> None:
    timeout = Limits().request_timeout
    before = daemon.metric("lvs_ha_api_connections_timed_out_total", listener="tcp")
    with socket.create_connection(("127.0.0.1", daemon.api_port)) as s:
        s.settimeout(timeout * 3)  # a deadline for the test, not a measurement
        try:
            data = s.recv(1024)
        except ConnectionResetError:
            data = b""
        assert data == b"", "the daemon closes the connection without a word"
    after = daemon.metric("lvs_ha_api_connections_timed_out_total", listener="tcp")
    assert after == before + 1
    assert f"127.0.0.1: no TLS handshake within {timeout:g}s" in daemon.log()


def test_a_handshake_then_silence_is_closed_within_the_same_deadline(daemon: Daemon, pki: Pki) -> None:
    timeout = Limits().request_timeout
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    with (
        socket.create_connection(("127.0.0.1", daemon.api_port)) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.settimeout(timeout * 3)
        try:
            data = s.recv(1024)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        assert data == b""


def test_the_metrics_listener_needs_no_token_and_serves_nothing_else(daemon: Daemon, pki: Pki) -> None:
    def get(path: str, method: str = "GET") -> tuple[int, str]:
        c = http.client.HTTPConnection("127.0.0.1", daemon.metrics_port, timeout=10)
        try:
            c.request(method, path)
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    status, body = get("/metrics")
    assert status == 200 and "lvs_ha_" in body
    assert get("/healthz") == (200, "ok\n")
    for path in ("/v1/status", "/v1/status?format=text", "/ui", "/v1/events", "/", "/metrics/../v1/status"):
        assert get(path)[0] == 404, path
    for path in ("/v1/drain", "/v1/reload", "/v1/failover"):
        assert get(path, "POST")[0] == 404, path
    assert get("/metrics", "POST")[0] == 405
    # the control API still wants its token for the same document
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    c = http.client.HTTPSConnection("127.0.0.1", daemon.api_port, timeout=10, context=ctx)
    c.request("GET", "/metrics")
    assert c.getresponse().status == 401
    c.close()


def test_with_a_client_ca_a_client_certificate_is_required(mtls: Daemon, pki: Pki) -> None:
    base = ["--url", url(mtls), "--token-file", str(mtls.token_file), "--cacert", str(pki.ca_file)]
    r = mtls.cli("status", *base)
    assert r.returncode == 2, (r.stdout, r.stderr)
    r = mtls.cli("status", *base, "--cert", str(pki.stranger_cert))
    assert r.returncode == 2, (r.stdout, r.stderr)
    r = mtls.cli("status", *base, "--cert", str(pki.client_cert))
    assert r.returncode == 0 and "web" in r.stdout, r.stderr
    assert "TLS handshake with 127.0.0.1 failed" in mtls.log()
