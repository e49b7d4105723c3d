"""Outbound TLS: how qmail-remote (built with the qmail-tls patch, build.sh) treats each peer.

By default TLS is opportunistic (RFC 7435): STARTTLS whenever the peer offers it, any
certificate accepted. But a peer that offers STARTTLS and then fails the handshake gets
no plaintext fallback: its mail waits in the queue. Two settings change that, written as
qmail-tls's control files, whole directories managed (a file put there by hand is removed):

- ``tlshosts``: peers that must prove who they are: control/tlshosts/FQDN.pem holds the
  CA certificates their certificate must chain to, and their name must match (else a
  temporary failure: the mail waits);
- ``notlshosts``: peers whose TLS is broken: control/notlshosts/FQDN makes qmail-remote
  send to them without TLS (tlshosts wins over it).

FQDN is the name qmail-remote connects to: the MX host, or the smtproutes relay.
qmail-remote reads these per delivery: nothing restarts.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from qmailhost.core import ops
from qmailhost.core.platform import Platform
from qmailhost.core.settings import FQDN, Settings, SettingsError


def directories(platform: Platform) -> tuple[str, str]:
    return f"{platform.control_dir}/tlshosts", f"{platform.control_dir}/notlshosts"


def configure(platform: Platform, settings: Settings) -> None:
    verified_dir, plain_dir = directories(platform)
    wanted = {f"{verified_dir}/{peer}.pem": ca.read_text() for peer, ca in settings.tlshosts.items()}
    wanted.update({f"{plain_dir}/{peer}": "" for peer in settings.notlshosts})
    for directory in (verified_dir, plain_dir):
        ops.directory(name=f"Create control/{directory.rsplit('/', 1)[1]}", path=directory, user="root",
                      group=platform.root_group, mode="755")
    for path, content in sorted(wanted.items()):
        peer = path.rsplit("/", 1)[1]
        what = f"verify {peer.removesuffix('.pem')}'s certificate" if path.endswith(".pem") else f"no TLS to {peer}"
        ops.whole_file(name=f"Outbound TLS: {what}", dest=path, content=content)
    for path in (*ops.files_in(verified_dir), *ops.files_in(plain_dir)):
        if path not in wanted:
            ops.absent_file(name=f"Outbound TLS: forget {path.rsplit('/', 1)[1]} (not in the inventory)", path=path)


# --- settings -----------------------------------------------------------------------------


def _peer(setting: str, name) -> str:
    if not isinstance(name, str) or not FQDN.match(name.lower()):
        raise SettingsError(setting, f"{name!r} is not a host name", "name the peer's MX or relay host, e.g. "
                            "mx.example.net")
    return name.lower()


def parse_tlshosts(value, _values=None) -> dict[str, Path]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SettingsError("tlshosts", "must be a mapping", "write {\"mx.example.net\": \"~/ca/example.pem\"}")
    peers = {}
    for name, ca in value.items():
        peer = _peer("tlshosts", name)
        path = Path(os.path.expanduser(str(ca)))
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise SettingsError(f"tlshosts.{peer}", f"{path} cannot be read ({error})",
                                "point it at a PEM file of CA certificates on this laptop") from None
        checked = subprocess.run(["openssl", "x509", "-noout"], input=text, capture_output=True, text=True)
        if checked.returncode != 0 or "PRIVATE KEY" in text:
            raise SettingsError(f"tlshosts.{peer}", f"{path} is not a PEM certificate (or holds a key)",
                                "point it at the CA certificates (PEM) the peer's certificate chains to")
        peers[peer] = path
    return peers


def parse_notlshosts(value, values: dict) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise SettingsError("notlshosts", "must be a list", "write [\"mx.broken.example\"]")
    peers = tuple(dict.fromkeys(_peer("notlshosts", name) for name in value))
    both = sorted(set(peers) & set(values["tlshosts"]))
    if both:
        raise SettingsError("notlshosts", f"{both[0]} is also in tlshosts (which would win)",
                            "list each peer in one of tlshosts and notlshosts")
    return peers
