"""Components: what a task declares, as data the library collects (qmailhost/registry.py).

A component is a module, tasks/<name>.py, that defines ``COMPONENT``, with what lands on
the host in files/<name>/. It declares its settings (with defaults and validation), what
it needs from the platform (packages, pkgsrc builds, source builds), the paths it
manages (listed in one round trip), the probes it adds to the one HostState fact, the
services it runs and the ports it serves TLS on (for the status checks), the DNS records
it needs (printed by records.py, compared with DNS by tasks/dns.py's checks), its status
checks, and what it adds to a backup. Adding a component is one tasks/ module, one
files/ folder and one line in deploy.py, never an edit to a central list.

The library contributes the same way: qmailhost.settings (the host and its accounts),
qmailhost.facts (stamps), qmailhost.checks and qmailhost.recovery (their settings), and
the platform's service backend (its probes and managed paths).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


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
    """A port that serves TLS under the one policy (tasks/tls.py): STARTTLS after the greeting (25,
    587, 143), or TLS from the first byte (465, 993). ROLE: what it is for, as the checks
    report it; PROTOCOL: what is spoken on it, "smtp", "imap" or "pop3"."""

    port: int
    role: str
    starttls: bool
    protocol: str = "smtp"


@dataclass(frozen=True)
class PairReader:
    """A service that holds the TLS pair (tasks/tls.py) in memory and re-reads it on a reload (HUP):
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


@dataclass(frozen=True)
class Needs:
    """What a component needs from one platform. PACKAGES: from its package system (apt,
    pkgin). BUILDS: the release files it builds from source (qmailhost/sources.py's names:
    fetched on the laptop, built on the host). On pkgsrc: PKGSRC_BUILDS (pkgpath, package,
    options) built from /usr/pkgsrc because binary packages lack the options;
    PKGSRC_DEFAULT_OPTIONS, the same verified in a binary package; PKGSRC_PROOFS (package,
    report command, marker, meaning): a built program asked whether an option took."""

    packages: tuple[str, ...] = ()
    builds: tuple[str, ...] = ()
    pkgsrc_builds: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    pkgsrc_default_options: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    pkgsrc_proofs: tuple[tuple[str, str, str, str], ...] = ()

    def __add__(self, other: Needs) -> Needs:
        def merged(mine: tuple, theirs: tuple) -> tuple:
            return (*mine, *(item for item in theirs if item not in mine))

        return Needs(*(merged(getattr(self, f), getattr(other, f)) for f in
                       ("packages", "builds", "pkgsrc_builds", "pkgsrc_default_options", "pkgsrc_proofs")))


def _none(*_args) -> tuple:
    return ()


def _no_needs(*_args) -> Needs:
    return Needs()


@dataclass(frozen=True)
class Component:
    name: str
    settings: tuple[Setting, ...] = ()
    needs: Callable[[Any, Any], Needs] = _no_needs  # (platform, settings) -> what it needs there
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
