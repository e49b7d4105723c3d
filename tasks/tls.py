"""TLS: the certificate and key stunnel offers on the submission port.

Either a pair from the laptop (the key transferred as a secret: never diffed or
printed), or a self-signed pair generated on the host once, kept across runs, and
made again only when the host name changes. The key never leaves the host it is on.
"""

from __future__ import annotations

import hashlib
import shlex

from pyinfra import host
from pyinfra.api import operation

from tasks import ops
from tasks.facts import host_state
from tasks.platform import Platform
from tasks.settings import Settings


def paths(platform: Platform) -> tuple[str, str]:
    return f"{platform.tls_dir}/cert.pem", f"{platform.tls_dir}/key.pem"


@operation()
def self_signed_certificate(hostname: str, cert: str, key: str, days: int = 825):
    """A self-signed certificate for HOSTNAME, made only when none for that name exists."""
    if host_state()["cert_cn"] == hostname:
        host.noop(f"the certificate for {hostname} exists")
        return
    new_cert, new_key = shlex.quote(cert + ".qmailhost-new"), shlex.quote(key + ".qmailhost-new")
    yield f"mkdir -p {shlex.quote(cert.rsplit('/', 1)[0])} && chmod 755 {shlex.quote(cert.rsplit('/', 1)[0])}"
    yield (f"umask 077 && openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days {days} -subj /CN={hostname} "
           f"-addext subjectAltName=DNS:{hostname} -keyout {new_key} -out {new_cert} 2>/dev/null")
    yield f"chmod 644 {new_cert} && mv -f {new_key} {shlex.quote(key)} && mv -f {new_cert} {shlex.quote(cert)}"


def configure(platform: Platform, settings: Settings) -> str:
    """Put the pair in place; returns its fingerprint (what stunnel's restart depends on)."""
    cert, key = paths(platform)
    if settings.self_signed:
        self_signed_certificate(name=f"Make a self-signed certificate for {settings.hostname}",
                                hostname=settings.hostname, cert=cert, key=key)
        return f"self-signed for {settings.hostname}"
    cert_data, key_data = settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()
    ops.whole_file(name="Install the TLS certificate", dest=cert, content=cert_data.decode())
    ops.secret_file(name="Install the TLS key", dest=key, data=key_data, mode="600")
    return hashlib.sha256(cert_data + key_data).hexdigest()
