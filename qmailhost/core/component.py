"""Components: what each folder of qmailhost declares, and what the core collects from it.

A component is a folder, qmailhost/<name>/, whose package defines ``COMPONENT``. It
declares its settings (with defaults and validation), the paths it manages (listed in
one round trip), the probes it adds to the one HostState fact, the services it runs
and the ports it serves TLS on (for the status checks), the DNS records it needs (printed by
records.py, compared with DNS by the dns/ checks), its status checks, and what it adds to a backup. The core
finds the folders itself (``components()``): adding a component is one new folder plus
one line in deploy.py, never an edit to a central list.

The framework contributes the same way: core.settings (the host and its accounts),
core.facts (stamps), core.checks and core.recovery (their settings), and the platform's
service backend (its probes and managed paths).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

FRAMEWORK = ("qmailhost.core.settings", "qmailhost.core.facts", "qmailhost.core.checks", "qmailhost.core.recovery")
NOT_COMPONENTS = ("core", "backends")


@dataclass(frozen=True)
class Setting:
    """One setting: its DEFAULT, and PARSE(raw value, settings parsed so far) giving the
    validated value or raising SettingsError. PORT: a port, distinct from every other."""

    name: str
    default: Any
    parse: Callable[[Any, dict], Any]
    meaning: str
    port: bool = False


@dataclass(frozen=True)
class Probe:
    """Lines of shell run inside the one HostState fact. SCRIPT(platform, settings) prints
    lines "KEY<TAB>field<TAB>..."; PARSE(list of field lists) gives host_state()[KEY]."""

    key: str
    script: Callable[[Any, Any], str]
    parse: Callable[[list[list[str]]], Any]
    default: Callable[[], Any]


@dataclass(frozen=True)
class Listener:
    """A service as the status checks see it: its daemontools name, its rc.d name, what it
    is for, its port (None: none) and whether the Internet may reach it; what it greets
    with (PROTOCOL: "smtp" or "imap") and whether TLS comes first (IMPLICIT_TLS)."""

    name: str
    rcd_name: str
    role: str
    port: int | None
    public: bool
    protocol: str = "smtp"
    implicit_tls: bool = False


@dataclass(frozen=True)
class TlsPort:
    """A port that serves TLS under the one policy (tls/): STARTTLS after the greeting (25,
    587, 143), or TLS from the first byte (465, 993). ROLE: what it is for, as the checks
    report it; PROTOCOL: what is spoken on it, "smtp", "imap" or "pop3"."""

    port: int
    role: str
    starttls: bool
    protocol: str = "smtp"


@dataclass(frozen=True)
class PairReader:
    """A service that holds the TLS pair (tls/) in memory and re-reads it on a reload (HUP):
    reloaded when the pair is replaced under it (an ACME renewal, a restore), so no
    connection is cut. STAMP: which of its stamps measures the pair, "restart" or "reload"
    (measured again after, so the next deploy sees nothing to do). A service that reads the
    pair per connection (spamdyke on 25) needs nothing and is not one."""

    service: str
    stamp: str
    rcd_reload: bool = True  # its rc.d script has a reload command; else it is restarted there


@dataclass(frozen=True)
class BackupPart:
    """What a component adds to a backup: host PATHS (files or whole trees, shell words
    such as ~alice/Maildir). A restore adds the files the host lacks under them, never
    overwriting; or, with RESTORE(platform, settings, backup), the component puts its
    files back itself (a key pair replaced whole, and its service restarted)."""

    paths: Callable[[Any, Any], tuple[str, ...]]  # (settings, platform) -> paths
    restore: Callable[[Any, Any, Any], None] | None = None


@dataclass(frozen=True)
class DnsRecord:
    """A record the host needs in DNS: NAME (absolute, no final dot), TYPE ("MX", "A", "AAAA",
    "TXT", "SRV"), VALUE in zone-file form without quotes (a TXT record's whole text, split
    into strings only when printed), the dns_CHECK that compares it with what DNS publishes
    and how bad it is when missing or different (SEVERITY: "error" or "warning"); COMMENT:
    one line printed above it."""

    name: str
    type: str
    value: str
    check: str
    severity: str = "error"
    comment: str = ""


def _none(*_args) -> tuple:
    return ()


@dataclass(frozen=True)
class Component:
    name: str
    settings: tuple[Setting, ...] = ()
    validate: Callable[[Any], None] | None = None  # checks across settings, once all are parsed
    managed_roots: Callable[[Any], tuple[str, ...]] = _none  # platform -> ("DEPTH:PATH", ...)
    probes: tuple[Probe, ...] = ()
    listeners: Callable[[Any], tuple[Listener, ...]] = _none  # settings -> the services it runs
    tls_ports: Callable[[Any], tuple[TlsPort, ...]] = _none  # settings -> the ports it serves TLS on
    checks: tuple[Callable, ...] = ()
    backup: BackupPart | None = None
    pair_readers: tuple[PairReader, ...] = ()
    # (settings, host state: the HostState dict) -> the DNS records it needs
    dns_records: Callable[[Any, dict], tuple[DnsRecord, ...]] = _none


@cache
def components() -> tuple[Component, ...]:
    """The framework's declarations, then every component folder's, in name order."""
    found = [importlib.import_module(name).COMPONENT for name in FRAMEWORK]
    import qmailhost

    for module in sorted(pkgutil.iter_modules(qmailhost.__path__), key=lambda m: m.name):
        if module.ispkg and module.name not in NOT_COMPONENTS:
            package = importlib.import_module(f"qmailhost.{module.name}")
            if hasattr(package, "COMPONENT"):
                found.append(package.COMPONENT)
    return tuple(found)


def for_platform(platform) -> tuple[Component, ...]:
    """components(), plus what the platform's service backend declares."""
    from qmailhost.backends import services

    backend = services.backend(platform)
    return (*components(), *([backend.COMPONENT] if hasattr(backend, "COMPONENT") else []))


def every_probe() -> tuple[Probe, ...]:
    """The probes of every component and of every service backend (to read any HostState)."""
    from qmailhost.backends import daemontools, rcd

    found = [*components(), *(getattr(b, "COMPONENT", None) for b in (daemontools, rcd))]
    return tuple(probe for component in found if component for probe in component.probes)
