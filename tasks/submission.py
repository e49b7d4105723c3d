"""Mail submission: ofmipd on 127.0.0.1:26, in one of the submission modes.

A mode says who does SMTP AUTH behind stunnel (tasks/stunnel.py); each is a small object of the
same shape: the program tcpserver runs (wrapper, ofmipd, its arguments), the files it
needs, the packages it adds, which listener takes submissions (ofmipd, or TMDA's
tmda-ofmipd on 8025) and whether TMDA's pieces stay (tasks/tmda.py). Applying a mode writes its
files, removes every other mode's, describes the submission service for the platform's
service backend and restarts that one service; the ofmipd builds (tasks/mess822.py) are
already on the host. The host records the active mode in /var/lib/qmailhost/submission-mode.
Its status checks: AUTH is required after STARTTLS, a wrong password fails, the test
account may send, and the mode on the host is the one asked for.
"""

from __future__ import annotations

import json
import re
import secrets
import smtplib
from dataclasses import dataclass

from pyinfra.api import deploy

from qmailhost import ops, tcprules
from qmailhost.backends import rcd, services
from qmailhost.checks import ERROR, FOREIGN, OK, SKIPPED, STRANGER, login_account, tls_context
from qmailhost.component import Component, Listener, Needs, Setting
from qmailhost.facts import STATE_DIR
from qmailhost.files import read, render
from qmailhost.platform import Platform
from qmailhost.settings import FQDN, Settings, SettingsError, mapping, port, whole_number
from tasks import accounts, checkpassword, mess822, spamdyke

USER = "ofmipd"
# The data segment each submission session may use (softlimit -m; rc.d's datalimit). ofmipd
# reads a command, AUTH or header line whole, with no length limit of its own: past this a
# session of endless lines ends, instead of growing until the kernel kills another daemon.
DATALIMIT = 64_000_000
MODE_FILE = f"{STATE_DIR}/submission-mode"


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    listener: str = "ofmipd"  # who listens behind stunnel: "ofmipd" or TMDA's "tmda-ofmipd"
    listener_port: int | None = None  # None: the ofmipd_port setting
    packages: tuple[str, ...] = ()  # packages this mode adds (where the platform has them)
    keeps_tmda: bool = False  # every other mode retires TMDA's pieces (tasks/tmda.py)
    platforms: tuple[str, ...] = ("debian", "netbsd")  # where it can run

    def spamdyke_config(self, platform: Platform) -> str:
        return f"{platform.config_dir}/spamdyke-ofmipd.conf"

    def wrapper(self, platform: Platform, settings: Settings) -> str:
        """What runs ofmipd: spamdyke (doing AUTH; its config ends the session at session_seconds),
        or, for the AUTH-patched ofmipd, ``timeout`` (the whole session) with the sender check
        as its qmail-queue (QMAILQUEUE)."""
        if self.name == "spamdyke":
            return f"{spamdyke.program(platform)} -f {self.spamdyke_config(platform)}"
        if self.name == "ofmipd":
            return f"env QMAILQUEUE={sender_check(platform)['program']} timeout {settings.session_seconds}"
        return ""

    def ofmipd(self, platform: Platform) -> str:
        return mess822.ofmipd(platform, with_auth=self.name != "spamdyke")

    def ofmipd_args(self, platform: Platform, settings: Settings) -> str:
        """The AUTH-patched ofmipd's arguments: '' HOSTNAME and the login (none when spamdyke does AUTH)."""
        if self.name == "spamdyke":
            return ""
        return f"'' {settings.hostname} {accounts.login_command(platform, checkpassword.program(platform))}"

    def program(self, platform: Platform, settings: Settings) -> str:
        parts = (self.wrapper(platform, settings), self.ofmipd(platform), self.ofmipd_args(platform, settings))
        return " ".join(part for part in parts if part)

    def upstream_port(self, settings: Settings) -> int:
        """Where stunnel sends submissions."""
        return self.listener_port or settings.ofmipd_port

    def files(self, platform: Platform, settings: Settings) -> dict[str, tuple[str, str]]:
        """The files this mode needs: path -> (content, mode)."""
        if self.name == "spamdyke":
            return {self.spamdyke_config(platform): (render(
                "submission/spamdyke-ofmipd.conf.j2", control_dir=platform.control_dir,
                login=accounts.login_command(platform, checkpassword.program(platform)),
                session_seconds=settings.session_seconds), "644")}
        if self.name == "ofmipd":
            paths = sender_check(platform)
            program = f"#!{platform.python}\n" + read("submission/senders.py")
            return {paths["program"]: (program, "755"),
                    paths["table"]: (sender_table(platform, settings), "644")}
        return {}


MODES = {
    "ofmipd": Mode("ofmipd", "ofmipd built with the SMTP AUTH patch does AUTH itself"),
    "spamdyke": Mode("spamdyke", "spamdyke does AUTH with checkpassword in front of stock ofmipd"),
    "tmda": Mode("tmda", "TMDA's tmda-ofmipd does AUTH (NetBSD only)", listener="tmda-ofmipd",
                 listener_port=8025, packages=("tmda",), keeps_tmda=True,
                 platforms=("netbsd",)),  # TMDA needs Python 2, which Debian no longer ships
}


def sender_check(platform: Platform) -> dict[str, str]:
    """The sender check (files/submission/senders.py) the AUTH-patched ofmipd queues through, and its table."""
    return {"program": f"{platform.config_dir}/submission-queue", "table": f"{platform.config_dir}/senders.json"}


def senders(settings: Settings) -> dict[str, dict[str, list[str]]]:
    """account -> what it may send as: "addresses" (exact), "extensions" (ADDRESS whose
    local part NAME may be followed by -anything), "domains" (every address there)."""
    local = list(dict.fromkeys([settings.hostname, *settings.domains]))
    table = {}
    for account in settings.accounts:
        name = account.name
        aliases = [alias for alias, target in settings.aliases.items() if target == name]
        extra = settings.extra_senders.get(name, ())
        table[name] = {
            "addresses": sorted({f"{local_part}@{domain}" for local_part in (name, *aliases) for domain in local}
                                | {entry for entry in extra if not entry.startswith("@")}),
            "extensions": sorted(f"{name}@{domain}" for domain in local),
            "domains": sorted({domain for domain, prefix in settings.virtualdomains.items()
                               if prefix == name or prefix.startswith(f"{name}-")}
                              | {entry[1:] for entry in extra if entry.startswith("@")}),
        }
    return table


def sender_table(platform: Platform, settings: Settings) -> str:
    return json.dumps({"queue": f"{platform.qmail_bin}/qmail-queue", "databytes": settings.databytes,
                       "max_recipients": settings.submission_max_recipients,
                       "accounts": senders(settings)}, indent=1, sort_keys=True) + "\n"


def mode_of(settings: Settings) -> Mode:
    """The Mode the submission setting names (validated when the settings were read)."""
    return MODES[settings.submission]


def mode_for(settings: Settings, platform: Platform) -> Mode:
    """The Mode, once it is known to run on PLATFORM (deploy.py asks once)."""
    mode = mode_of(settings)
    if platform.name not in mode.platforms:
        offered = [name for name, other in MODES.items() if platform.name in other.platforms]
        raise SettingsError("submission", f"mode {mode.name!r} is not available on {platform.name} "
                            "(TMDA needs Python 2, which Debian no longer ships)", f"use one of: {', '.join(offered)}")
    return mode


@deploy("submission")
def user(platform: Platform) -> None:
    group = checkpassword.SERVICE_GROUP
    ops.group(name=f"Create group {group}", group=group, tools=platform.accounts)
    ops.user(name=f"Create user {USER}", user=USER, group=group, system=True,
             home="/nonexistent", shell=platform.nologin, tools=platform.accounts)


@deploy("submission")
def configure(platform: Platform, settings: Settings, mode: Mode) -> None:
    cdb = tcprules.rules(platform, "ofmip", render("submission/ofmip.rules.j2", port=settings.ofmipd_port))
    wanted = mode.files(platform, settings)
    for other in MODES.values():
        for path in other.files(platform, settings):
            if path not in wanted:
                ops.absent_file(name=f"Remove {path} (mode {other.name})", path=path)
    for path, (content, file_mode) in wanted.items():
        ops.whole_file(name=f"Write {path}", dest=path, content=content, mode=file_mode)
    services.declare(platform, _listener(platform, settings, mode, cdb))
    ops.whole_file(name="Record the submission mode", dest=MODE_FILE, content=mode.name + "\n")


def _listener(platform: Platform, settings: Settings, mode: Mode, cdb: str) -> services.Service:
    """The service that takes submissions from stunnel in MODE."""
    if mode.listener == "tmda-ofmipd":
        return services.Service(
            name="tofmipd", description=f"TMDA's tmda-ofmipd on 127.0.0.1:{mode.listener_port}; mode {mode.name!r}",
            run="", rcd=services.Rcd("tofmipd", (("flags", f"-p 127.0.0.1:{mode.listener_port}"),)),
            replaces=("qmail-ofmipd", f"submission mode {mode.name!r}: tmda-ofmipd takes submissions"))
    return services.Service(
        name="qmail-ofmipd", description=f"mail submission on 127.0.0.1:{settings.ofmipd_port} behind stunnel; "
                                         f"mode {mode.name!r}: {mode.description}",
        run=render("submission/qmail-ofmipd.run.j2", port=settings.ofmipd_port, tcprules=cdb,
                   submission_port=settings.submission_port, mode=mode.name, description=mode.description,
                   hostname=settings.hostname, connections=settings.submission_connections,
                   program=mode.program(platform, settings), datalimit=DATALIMIT),
        rcd=services.Rcd("qmailofmipd", (
            *rcd.tcpserver(platform, settings.hostname, "ofmipd", "127.0.0.1", settings.ofmipd_port, cdb,
                           DATALIMIT),
            ("precheckpassword", ""),
            ("checkpassword", ""),
            ("preofmipd", mode.wrapper(platform, settings)),
            ("ofmipdcmd", mode.ofmipd(platform)),
            ("postofmipd", mode.ofmipd_args(platform, settings)),
            *rcd.logging("ofmipd"),
            ("tls", "NO"),  # stunnel ends TLS in front of it
        )),
    )


# --- settings -----------------------------------------------------------------------------


def _mode(value, _values=None) -> str:
    if value not in MODES:
        raise SettingsError("submission", f"unknown mode {value!r}", f"use one of: {', '.join(MODES)}")
    return value


_ADDRESS = re.compile(r"[a-z0-9][a-z0-9._+=-]{0,63}@" + FQDN.pattern.strip("^$"))


def _extra_senders(value, values: dict) -> dict[str, tuple[str, ...]]:
    names = {account.name for account in values["accounts"]}
    granted = {}
    for account, entries in mapping("extra_senders", value).items():
        if account not in names:
            raise SettingsError("extra_senders", f"{account!r} is not an account",
                                f"use one of: {', '.join(sorted(names)) or '(add an account)'}")
        if not isinstance(entries, list | tuple):
            raise SettingsError("extra_senders", f"{account}: {entries!r} is not a list",
                                "write it as [\"alice@club.example\", \"@alice.example\"]")
        for entry in entries:
            text = str(entry)
            if not (_ADDRESS.fullmatch(text) or (text.startswith("@") and FQDN.fullmatch(text[1:]))):
                raise SettingsError("extra_senders", f"{account}: {text!r} is neither an address nor @domain",
                                    "use lower-case entries like \"alice@club.example\" or \"@alice.example\"")
        granted[account] = tuple(str(entry) for entry in entries)
    return granted


def _no_clash_with_tmda(settings: Settings) -> None:
    listener_port = mode_of(settings).listener_port
    if listener_port is None:
        return
    for setting in ("smtp_port", "submission_port", "ofmipd_port"):
        if getattr(settings, setting) == listener_port:
            raise SettingsError(setting, "port 8025 is tmda-ofmipd's in tmda mode", "use another port")


def _listeners(settings: Settings) -> tuple[Listener, ...]:
    mode = mode_of(settings)
    if mode.listener == "tmda-ofmipd":
        return (Listener("tofmipd", "tofmipd", "tmda-ofmipd behind stunnel", mode.listener_port, public=False),)
    return (Listener("qmail-ofmipd", "qmailofmipd", "ofmipd behind stunnel", settings.ofmipd_port, public=False),)


# --- status checks --------------------------------------------------------------------------


def check_submission_requires_auth(target):
    """On every submission port, once TLS is up, AUTH is offered (mail clients log in only
    with what the EHLO offers) and nobody sends without it."""
    refused = []
    for tls_port in target.submission_ports:
        with target.submission(tls_context(), tls_port) as client:
            version = client.sock.version()
            if "auth" not in client.esmtp_features:
                return ERROR, f"on {tls_port.port}, after TLS ({version}) the EHLO offers no AUTH: no mail client " \
                              "can log in"
            code, reply = client.mail(STRANGER)
            rcpt_code = None
            if code < 500:
                rcpt_code, _ = client.rcpt(FOREIGN)
        if code < 500 and rcpt_code < 500:
            return ERROR, f"on {tls_port.port}, mail accepted without AUTH (MAIL {code}, RCPT {rcpt_code})"
        refused.append(f"{tls_port.port} ({'MAIL' if code >= 500 else 'RCPT'} {code if code >= 500 else rcpt_code})")
    return OK, f"after TLS ({version}), mail without AUTH refused on {', '.join(refused)}"


def check_wrong_password_refused(target):
    """AUTH with a wrong password fails with 535."""
    account, why_not = login_account(target)
    if account is None:
        return SKIPPED, why_not
    code = _auth(target, account.name, "wrong-" + secrets.token_hex(8))
    if code == 235:
        return ERROR, f"a wrong password for {account.name} was accepted"
    if code != 535:
        return ERROR, f"a wrong password for {account.name} got {code}, not 535"
    return OK, f"a wrong password for {account.name} fails (535)"


def check_account_can_submit(target):
    """The test account logs in and may send."""
    account, why_not = login_account(target)
    if account is None:
        return SKIPPED, why_not
    address = f"{account.name}@{target.settings.primary_domain}"
    with target.submission(tls_context()) as client:
        code, _ = client.login(account.name, account.password)  # as a mail client: with what the EHLO offers
        mail_code, _ = client.mail(address)
        rcpt_code, _ = client.rcpt(FOREIGN)
        client.rset()
    if (mail_code, rcpt_code) != (250, 250):
        return ERROR, f"{account.name} logged in ({code}) but MAIL/RCPT got {mail_code}/{rcpt_code}"
    return OK, f"{account.name} logs in ({code}) and may send (nothing sent)"


def _auth(target, user: str, password: str) -> int:
    """The reply to one login, as a mail client set to the first mechanism the EHLO offers makes it
    (smtplib's login() would try the next one after a refusal: twice the failure delay)."""
    with target.submission(tls_context()) as client:
        offered = client.esmtp_features.get("auth", "").upper().split()
        mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
        if mechanism is None:
            raise smtplib.SMTPNotSupportedError(f"after STARTTLS the EHLO offers no AUTH PLAIN or LOGIN ({offered})")
        client.user, client.password = user, password
        auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        try:
            code, _ = client.auth(mechanism, auth, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as error:
            code = error.smtp_code
    return code


def check_submission_mode(target):
    """The submission mode active on the host is the one asked for."""
    active = target.run(f"cat {MODE_FILE} 2>/dev/null || true").strip()
    wanted = target.settings.submission
    if not active:
        return ERROR, f"no mode recorded in {MODE_FILE} (asked for {wanted})"
    if active != wanted:
        return ERROR, f"mode {active} is active, {wanted} was asked for"
    return OK, f"mode {active}"


COMPONENT = Component(
    name="submission",
    settings=(
        Setting("submission", "ofmipd", _mode,
                "who does SMTP AUTH: `ofmipd`, `spamdyke` or `tmda` (NetBSD)"),
        Setting("ofmipd_port", 26, port("ofmipd_port"), "ofmipd, on 127.0.0.1 only", port=True),
        Setting("submission_connections", 20, whole_number("submission_connections", 1, 1000),
                "tcpserver's connection limit for ofmipd"),
        Setting("extra_senders", {}, _extra_senders,
                "what an account may send as beyond its own addresses, extensions, aliases and virtual domains: "
                "`{\"alice\": [\"alice@club.example\", \"@alice.example\"]}` (ofmipd mode)"),
        Setting("submission_max_recipients", 100, whole_number("submission_max_recipients", 1, 10_000),
                "the most recipients one submitted message may have (ofmipd mode)"),
    ),
    validate=_no_clash_with_tmda,
    needs=lambda _platform, settings: Needs(packages=mode_of(settings).packages),
    listeners=_listeners,
    checks=(check_submission_requires_auth, check_wrong_password_refused, check_account_can_submit,
            check_submission_mode),
)
