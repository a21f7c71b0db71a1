"""``node.api.tls``, ``node.api.metrics_listen`` and ``node.log_format`` in the loader: the TLS key is a secret file
(mode 0600, owned by root or the daemon), a key that is not the certificate's, TLS without a TCP listener and a
metrics listener on the API's own port are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from ha.config.issues import ConfigErrors
from ha.config.load import load_config
from ha.config.model import TlsConfig

BASE = """\
node:
  name: d1
  state_dir: {tmp}/state
  dataplane: memory
  log_format: {fmt}
  api:
    socket: {tmp}/api.sock
{api}
"""


def write(tmp: Path, api: str, fmt: str = "json") -> Path:
    (tmp / "state").mkdir(exist_ok=True, mode=0o700)
    p = tmp / "lvs-ha.yaml"
    p.write_text(BASE.format(tmp=tmp, api=api, fmt=fmt))
    return p


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    other = ca.issue_cert("127.0.0.2")
    out = {
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "other_key": tmp_path / "other.key",
        "ca": tmp_path / "ca.pem",
        "token": tmp_path / "token",
    }
    server.cert_chain_pems[0].write_to_path(str(out["cert"]))
    server.private_key_pem.write_to_path(str(out["key"]))
    other.private_key_pem.write_to_path(str(out["other_key"]))
    ca.cert_pem.write_to_path(str(out["ca"]))
    out["token"].write_text("0123456789abcdef0123\n")
    for k in ("key", "other_key", "token"):
        out[k].chmod(0o600)
    return out


def tls_api(f: dict[str, Path], key: str = "key", ca: bool = True, listen: bool = True) -> str:
    lines = [f"    token_file: {f['token']}"]
    if listen:
        lines.append("    listen: '127.0.0.1:9180'")
    lines += ["    tls:", f"      cert_file: {f['cert']}", f"      key_file: {f[key]}"]
    if ca:
        lines.append(f"      client_ca_file: {f['ca']}")
    lines.append("    metrics_listen: '127.0.0.1:9100'")
    return "\n".join(lines)


def errors(path: Path) -> str:
    with pytest.raises(ConfigErrors) as e:
        load_config(path)
    return "\n".join(str(i) for i in e.value.errors)


def test_a_valid_tls_and_metrics_config(tmp_path: Path, files: dict[str, Path]) -> None:
    cfg, _ = load_config(write(tmp_path, tls_api(files)))
    assert cfg.node.api.tls == TlsConfig(str(files["cert"]), str(files["key"]), str(files["ca"]))
    assert cfg.node.api.metrics_listen == "127.0.0.1:9100"
    assert cfg.node.log_format == "json"


def test_the_tls_key_must_be_readable_by_its_owner_only(tmp_path: Path, files: dict[str, Path]) -> None:
    files["key"].chmod(0o644)
    text = errors(write(tmp_path, tls_api(files)))
    assert "node.api.tls.key_file" in text and "chmod 600" in text and str(files["key"]) in text


def test_a_key_that_is_not_the_certificates(tmp_path: Path, files: dict[str, Path]) -> None:
    text = errors(write(tmp_path, tls_api(files, key="other_key")))
    assert "node.api.tls.cert_file" in text and "cannot use the certificate" in text


def test_a_missing_client_ca_file(tmp_path: Path, files: dict[str, Path]) -> None:
    files["ca"].unlink()
    text = errors(write(tmp_path, tls_api(files)))
    assert "cannot read" in text and str(files["ca"]) in text


def test_tls_needs_the_tcp_listener(tmp_path: Path, files: dict[str, Path]) -> None:
    assert "set api.listen or remove tls" in errors(write(tmp_path, tls_api(files, listen=False)))


def test_the_metrics_listener_has_a_port_of_its_own(tmp_path: Path, files: dict[str, Path]) -> None:
    api = f"    token_file: {files['token']}\n    listen: '127.0.0.1:9180'\n    metrics_listen: '127.0.0.1:9180'"
    assert "an address and port of its own" in errors(write(tmp_path, api))


def test_log_format_is_text_or_json(tmp_path: Path) -> None:
    cfg, _ = load_config(write(tmp_path, "", fmt="text"))
    assert cfg.node.log_format == "text"
    assert "node.log_format" in errors(write(tmp_path, "", fmt="xml"))
