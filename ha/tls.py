"""TLS for the control API's TCP listener (``node.api.tls``) and for the command line's ``--url https://...``.

The server context (``server_context``) speaks TLS 1.2 and later only, with the certificate chain and key of
``cert_file``/``key_file`` and, with ``client_ca_file``, requires a client certificate signed by that CA. The loader
builds it once when it checks files (``tls_problem``), so ``lvs-ha check-config`` finds a key that does not match its
certificate, or a file that is not PEM, before a start or a reload does.
"""

from __future__ import annotations

import ssl

from ha.config.model import TlsConfig


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """The listener's context; OSError or ssl.SSLError (with the file named) when a file cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    for path in (tls.cert_file, tls.key_file, tls.client_ca_file):
        if path is not None:  # load_* say "No such file" without naming it
            with open(path, "rb"):
                pass
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except ssl.SSLError as e:
        raise ssl.SSLError(
            f"cannot use the certificate {tls.cert_file} with the key {tls.key_file}: {e.reason or e}"
        ) from None
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as e:
            raise ssl.SSLError(f"cannot use the client CA file {tls.client_ca_file}: {e.reason or e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def tls_problem(tls: TlsConfig) -> str | None:
    """Why ``tls`` cannot be used (a file missing, unreadable, not PEM, a key that is not the certificate's), or
    None."""
    try:
        server_context(tls)
    except ssl.SSLError as e:
        return str(e.args[0] if len(e.args) == 1 else e)
    except OSError as e:
        return f"cannot read {e.filename or 'a TLS file'}: {e.strerror or e}"
    return None


def client_context(
    cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None, verify: bool = True
) -> ssl.SSLContext:
    """A client's context: TLS 1.2+, the server verified against ``cafile`` (else the system's CAs) unless
    ``verify`` is off, and a client certificate when given."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx
