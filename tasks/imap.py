"""IMAP: Dovecot serving each account's ~/Maildir (where qmail delivers), logged in with
the password the account submits with.

- Dovecot comes from the platform's packages (Debian 12: 2.3; Debian 13: 2.4, whose
  configuration language differs; NetBSD: pkgsrc's mail/dovecot2). Which language the
  whole dovecot.conf is written in is platform data (``LANGUAGES``); the run checks that
  the installed Dovecot speaks it before starting it, and stops with a one-line fix if not.
- Passwords: PAM over the system accounts (tasks/accounts.py), the same hash checkpassword reads
  (2.4 has no shadow or checkpassword driver). Messages and flags stay in the Maildir;
  Dovecot's indexes and caches, which it rebuilds, go to ~/.dovecot-index, outside what a
  backup carries.
- Implicit TLS on ``imaps_port`` (993) and STARTTLS on ``imap_port`` (143; null turns it
  off), no password before TLS, the one TLS policy and pair (tasks/tls.py); POP3 on ``pop3s_port``
  (995) only when set.
- Supervised like the other services (daemontools, in the foreground; rc.d on NetBSD):
  restarted when its config changes, reloaded (HUP) when only the pair does, so sessions
  stay up. Debian's own systemd units are stopped and disabled where systemd runs.
- Status checks: ``verify_account`` logs in on every IMAP port and opens INBOX; a wrong
  password is refused; on 143, LOGIN before STARTTLS is refused. The TLS checks (tasks/tls.py)
  cover its ports too.
"""

from __future__ import annotations

import imaplib
import re
import secrets
import shlex
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import OperationError, deploy, operation
from pyinfra.operations import systemd

from qmailhost import ops
from qmailhost.backends import services
from qmailhost.checks import ERROR, OK, SKIPPED, TIMEOUT, login_account, one_line, tls_context
from qmailhost.component import Component, Listener, Needs, PairReader, Probe, Setting, TlsPort
from qmailhost.facts import host_state
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, optional_port, port
from tasks import accounts, dns, tls

INDEX_DIR = ".dovecot-index"  # under each account's home: rebuilt by Dovecot, never backed up


@dataclass(frozen=True)
class Paths:
    program: str
    config: str
    packages: tuple[str, ...]  # IMAP
    pop3_packages: tuple[str, ...]  # added when pop3s_port is set
    languages: dict[str, str]  # release -> the configuration language its Dovecot speaks
    log_path: str | None  # None: Dovecot's default (syslog)
    pam_service: str | None  # the PAM service Dovecot asks; None: "dovecot"
    pam_file: str | None = None  # where qmailhost writes that service (files/imap/pam.j2): mail accounts only
    units: tuple[str, ...] = ()  # the package's own systemd units, which would hold 143 and 993 too


PATHS = {
    # Its own config path (dovecot -F -c), not the package's conffile /etc/dovecot/dovecot.conf.
    "debian": Paths("/usr/sbin/dovecot", "/etc/qmailhost/dovecot.conf", ("dovecot-imapd",), ("dovecot-pop3d",),
                    {"12": "2.3", "13": "2.4"}, "/dev/stderr", "qmailhost-imap",
                    pam_file="/etc/pam.d/qmailhost-imap", units=("dovecot.service", "dovecot.socket")),
    # pkgsrc's rc.d script requires this path; the one package carries IMAP and POP3. Its
    # mail/dovecot2 was 2.3.x where read (see the README). PAM: the base system's own
    # /etc/pam.d/imap and /etc/pam.d/pop3, named by the protocol ("%s").
    "netbsd": Paths("/usr/pkg/sbin/dovecot", "/usr/pkg/etc/dovecot/dovecot.conf", ("dovecot",), (),
                    {"9": "2.3", "10": "2.3"}, None, "%s"),
}


def language(platform: Platform) -> str:
    return PATHS[platform.name].languages[platform.release]


def packages(platform: Platform, settings: Settings) -> tuple[str, ...]:
    paths = PATHS[platform.name]
    return (*paths.packages, *(paths.pop3_packages if settings.pop3s_port else ()))


@deploy("imap")
def configure(platform: Platform, settings: Settings, pair: tls.Pair) -> None:
    paths = PATHS[platform.name]
    if host_state().get("systemd"):
        for unit in paths.units:
            systemd.service(name=f"Stop and disable {unit} (qmailhost supervises Dovecot)", service=unit,
                            running=False, enabled=False)
    spoken = language(platform)
    speaks(name=f"Check that the installed Dovecot is {spoken}", program=paths.program, language=spoken)
    if paths.pam_file:  # read by PAM at each login: nothing restarts
        ops.whole_file(name="Write Dovecot's PAM service (mail accounts only)", dest=paths.pam_file,
                       content=render("imap/pam.j2", accounts_file=accounts.mail_accounts_file(platform),
                                      brake=accounts.brake(platform)))
    cert, key = tls.paths(platform)
    config = render(f"imap/dovecot-{spoken}.conf.j2", language=spoken, policy=tls.policy(settings), cert=cert, key=key,
                    imap_port=settings.imap_port, imaps_port=settings.imaps_port, pop3s_port=settings.pop3s_port,
                    index_dir=INDEX_DIR, log_path=paths.log_path, pam_service=paths.pam_service)
    rewritten = ops.differs(paths.config, config)
    ops.whole_file(name="Write Dovecot's config", dest=paths.config, content=config)
    services.declare(platform, services.Service(
        name="dovecot", description="IMAP over the accounts' Maildirs",
        run=render("imap/dovecot.run.j2", program=paths.program, config=paths.config),
        rcd=services.Rcd("dovecot"),
        reads_at_start=(config,), rewritten=rewritten,
        reload_on=(pair.fingerprint,), reload_rewritten=pair.rewritten, reload_measured=pair.measured,
    ))


def _version_probe(platform: Platform, settings: Settings) -> str:
    program = shlex.quote(PATHS[platform.name].program)
    return f"[ -x {program} ] && printf 'dovecot\\t%s\\n' \"$({program} --version 2>/dev/null | cut -d' ' -f1)\""


def _version(lines: list[list[str]]) -> str | None:
    """The first word `dovecot --version` printed ("2.4.1-4"), None when it is not installed."""
    return next((fields[0] for fields in lines if fields and fields[0]), None)


def _speaks(version: str, spoken: str) -> bool:
    return re.match(rf"{re.escape(spoken)}(\.|$)", version) is not None


@operation()
def speaks(program: str, language: str):
    """The installed Dovecot speaks LANGUAGE (the config's); not installed yet: checked when the
    run reaches this, after the package install."""
    version = host_state()["dovecot"]  # read with the run's other facts, before the package install
    refusal = (f"the installed Dovecot is {{}}, but qmailhost writes Dovecot {language}'s configuration for this "
               f"release: install the release's own Dovecot package")
    if version is not None:
        if not _speaks(version, language):
            raise OperationError(refusal.format(version))
        host.noop(f"Dovecot {version} speaks {language}")
        return
    yield (f"v=$({shlex.quote(program)} --version | cut -d' ' -f1); case \"$v\" in {language}|{language}.*) ;; "
           f"*) echo \"{refusal.format('$v')}\" >&2; exit 1 ;; esac")


# --- status checks ---------------------------------------------------------------------------


def _imap_ports(settings: Settings) -> tuple[TlsPort, ...]:
    return (TlsPort(settings.imaps_port, "IMAP, implicit TLS", starttls=False, protocol="imap"),
            *([TlsPort(settings.imap_port, "IMAP, STARTTLS", starttls=True, protocol="imap")]
              if settings.imap_port else []))


def check_imap_login(target):
    """verify_account logs in on every IMAP port once TLS is up and opens INBOX; a wrong password is refused."""
    account, why_not = login_account(target)
    if account is None:
        return SKIPPED, why_not
    opened = []
    for tls_port in _imap_ports(target.settings):
        with target.tls_session(tls_port, tls_context()) as client:
            try:
                client.login(account.name, account.password)
            except imaplib.IMAP4.error as error:
                return ERROR, f"{account.name} cannot log in on {tls_port.port}: {_reply(error)}"
            status, data = client.select("INBOX", readonly=True)
            if status != "OK":
                return ERROR, f"{account.name} logged in on {tls_port.port} but INBOX does not open: {data!r}"
        opened.append(f"{tls_port.port} ({int(data[0])} messages)")
    with target.tls_session(_imap_ports(target.settings)[0], tls_context()) as client:
        try:
            client.login(account.name, "wrong-" + secrets.token_hex(8))
        except imaplib.IMAP4.error:
            pass
        else:
            return ERROR, f"a wrong password for {account.name} was accepted on {target.settings.imaps_port}"
    return OK, f"{account.name} opens INBOX on {', '.join(opened)}; a wrong password is refused"


def check_imap_no_cleartext_login(target):
    """On the STARTTLS port, no password is taken before TLS (LOGINDISABLED, LOGIN refused)."""
    imap_port = target.settings.imap_port
    if imap_port is None:
        return SKIPPED, "imap_port is off: IMAP only with TLS from the first byte"
    if target.on_host:
        # Dovecot counts a connection from the host's own address as secure, so it offers LOGIN there
        return SKIPPED, "checked from the laptop only (Dovecot trusts the host's own connections)"
    client = imaplib.IMAP4(target.address, imap_port, timeout=TIMEOUT)
    try:
        offered = set(client.capabilities)
        try:
            client.login("qmailhost-verify", "not-a-password")  # no account: nothing can be exposed
        except imaplib.IMAP4.error as error:
            refusal = _reply(error)
        else:
            return ERROR, f"port {imap_port} took LOGIN in cleartext"
    finally:
        client.shutdown()
    if "LOGINDISABLED" not in offered:
        return ERROR, f"port {imap_port} does not say LOGINDISABLED before STARTTLS"
    if "STARTTLS" not in offered:
        return ERROR, f"port {imap_port} offers no STARTTLS"
    return OK, f"LOGINDISABLED before STARTTLS, LOGIN refused ({refusal})"


def _reply(error: imaplib.IMAP4.error) -> str:
    """The server's words in an imaplib error (it carries them as bytes)."""
    said = error.args[0] if error.args else ""
    return one_line(said.decode(errors="replace") if isinstance(said, bytes) else str(said))


# --- settings -----------------------------------------------------------------------------


COMPONENT = Component(
    name="imap",
    needs=lambda platform, settings: Needs(packages=packages(platform, settings)),
    settings=(
        Setting("imaps_port", 993, port("imaps_port"), "Dovecot, IMAP with implicit TLS", port=True),
        Setting("imap_port", 143, optional_port("imap_port"),
                "Dovecot, IMAP with STARTTLS (no password before it); `null` turns it off", port=True),
        Setting("pop3s_port", None, optional_port("pop3s_port"),
                "Dovecot, POP3 with implicit TLS; `null` (the default) leaves POP3 off", port=True),
    ),
    probes=(Probe("dovecot", _version_probe, _version, lambda: None),),
    listeners=lambda settings: (Listener("dovecot", "dovecot", "IMAP", settings.imaps_port, public=True,
                                         protocol="imap", implicit_tls=True),),
    tls_ports=lambda settings: (
        *_imap_ports(settings),
        *([TlsPort(settings.pop3s_port, "POP3, implicit TLS", starttls=False, protocol="pop3")]
          if settings.pop3s_port else []),
    ),
    checks=(check_imap_login, check_imap_no_cleartext_login),
    dns_records=lambda settings, _state: dns.service_records(
        settings, (("imaps", settings.imaps_port), ("imap", settings.imap_port)), "IMAP"),
    pair_readers=(PairReader("dovecot", stamp="reload"),),
)
