"""qmail (notqmail): users, build, control files, aliases, sendmail, qmail-send, the queue.

notqmail is built from its pinned release into /var/qmail (Debian) or comes from
pkgsrc's qmail package (NetBSD: NEEDS decides). Its
control files are managed as whole files (diffable with --dry --diff); qmail-send
delivers to each user's ./Maildir/. Neighbours: qmail-smtpd (port 25, tasks/smtpd.py) and
ofmipd (tasks/submission.py) queue through qmail-queue; qmail-send picks the mail up. Its
status checks watch the queue (queue.sh, read-only) and the remote deliveries qmail-send
logged since the host last looked (deliveries.sh: bounces, domains deferred again and again).

Outbound TLS: how qmail-remote (built with the qmail-tls patch, files/qmail/build.sh) treats each peer.

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
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pyinfra.api import deploy

from qmailhost import builds, ops
from qmailhost.backends import rcd, services
from qmailhost.checks import ERROR, OK, WARNING, Failed, age, one_line
from qmailhost.component import Component, Listener, Needs, Setting
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.settings import FQDN, Settings, SettingsError, mapping, whole_number


@dataclass(frozen=True)
class Paths:
    """Where this platform's sendmail comes from, and what qmail-run's rc.d scripts read."""

    sendmail_links: tuple[str, ...]  # links to qmail's sendmail
    mailer_conf: str | None  # NetBSD's mailwrapper(8) configuration, when it has one
    connection_limit_files: tuple[tuple[str, str], ...]  # control files with tcpserver's limits (qmail-run)


NETBSD_MAILER_CONF = """\
# mailwrapper(8): qmail's programs (managed by qmailhost; NetBSD's was postfix's)
sendmail	/usr/pkg/bin/sendmail
send-mail	/usr/pkg/bin/sendmail
mailq		/usr/pkg/bin/qmail-qread
"""
PATHS = {
    "debian": Paths(("/usr/sbin/sendmail", "/usr/lib/sendmail"), None, ()),
    "netbsd": Paths((), NETBSD_MAILER_CONF, (("concurrencyincoming", "smtp_connections"),
                                             ("concurrencysubmission", "submission_connections"))),
}

# notqmail's INSTALL.ids: group nofiles for the unprivileged daemons, qmail for the queue.
GROUPS = ("nofiles", "qmail")
USERS = (  # (user, group, home)
    ("alias", "nofiles", "alias"),
    ("qmaild", "nofiles", ""),
    ("qmaill", "nofiles", ""),
    ("qmailp", "nofiles", ""),
    ("qmailq", "qmail", ""),
    ("qmailr", "qmail", ""),
    ("qmails", "qmail", ""),
)


# What each platform provides: Debian builds notqmail (with the qmail-tls patch) from its
# pinned release; pkgsrc's qmail package is built with "tls" by default (mail/qmail/options.mk
# suggests it: qmail-remote's TLS, the patch's control/tlshosts and notlshosts), verified,
# never rebuilt; qmail-run brings its rc.d scripts. ucspi-tcp: tcpserver, tcprules.
NEEDS = {
    "debian": Needs(packages=("build-essential", "groff-base", "patch", "libssl-dev", "ucspi-tcp"),
                    builds=("notqmail",)),
    "netbsd": Needs(packages=("qmail-run", "ucspi-tcp"),
                    pkgsrc_default_options=(("mail/qmail", "qmail", ("tls",)),)),
}


@deploy("qmail")
def users(platform: Platform) -> None:
    for group in GROUPS:
        ops.group(name=f"Create group {group}", group=group, tools=platform.accounts)
    for user, group, home in USERS:
        ops.user(
            name=f"Create user {user}", user=user, group=group, system=True,
            home=f"{platform.qmail_home}/{home}".rstrip("/"), shell=platform.nologin, tools=platform.accounts,
        )


@deploy("qmail")
def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "notqmail" not in NEEDS[platform.name].builds:
        return  # a package provides it (backends/packages.py), built with its tls option
    builds.build(
        "notqmail", "Build and install notqmail with the qmail-tls patch", "qmail/build.sh",
        args=[distfiles["notqmail"], distfiles["qmail-tls-patch"]],
        inputs=[checksums["notqmail"], checksums["qmail-tls-patch"], platform.qmail_home],
    )


def build_identity(checksums: dict[str, str]) -> str:
    """What qmail-send's restart stamp counts of the build: the release and the patch (or pkgsrc's)."""
    return " ".join(checksums.get(name, "pkgsrc") for name in builds.NEEDS["notqmail"])


def control_files(settings: Settings, platform: Platform | None = None) -> dict[str, str | None]:
    """Every control file qmailhost manages: name -> content (None: must be absent)."""
    locals_ = [settings.hostname, "localhost", *settings.domains]
    limits = {name: str(getattr(settings, setting)) for name, setting in
              (PATHS[platform.name].connection_limit_files if platform else ())}
    return {
        "me": settings.hostname,
        "defaultdomain": settings.primary_domain,
        "defaulthost": settings.primary_domain,
        "plusdomain": settings.primary_domain,
        "locals": "\n".join(dict.fromkeys(locals_)),
        "rcpthosts": "\n".join(dict.fromkeys([*locals_, *settings.virtualdomains])),
        "virtualdomains": "\n".join(f"{d}:{p}" for d, p in settings.virtualdomains.items()) or None,
        "smtproutes": "\n".join(f"{d}:{r}" for d, r in settings.smtproutes.items()) or None,
        "databytes": str(settings.databytes),
        "concurrencyremote": str(settings.concurrency_remote),
        "concurrencylocal": str(settings.concurrency_local),
        "defaultdelivery": "./Maildir/",
        **limits,  # qmail-run's rc.d scripts read tcpserver's connection limits here
    }


# What qmail-send reads only at start (a restart applies them) and what it re-reads on
# HUP; everything else is read by each new qmail-smtpd, ofmipd or qmail-remote process.
READ_AT_START = ("me", "defaultdomain", "defaulthost", "plusdomain", "concurrencyremote",
                 "concurrencylocal", "defaultdelivery")
READ_ON_HUP = ("locals", "virtualdomains")


@deploy("qmail")
def configure(platform: Platform, settings: Settings, remote: str | None = None) -> dict[str, str]:
    """Write the control files and qmail-send's start (REMOTE: what it runs as qmail-remote,
    the DKIM signer; None: qmail-remote); returns them for the services' restart fingerprints."""
    control = control_files(settings, platform)
    for name, content in control.items():
        path = f"{platform.control_dir}/{name}"
        if content is None:
            ops.absent_file(name=f"Remove control/{name}", path=path)
        else:
            ops.whole_file(name=f"Write control/{name}", dest=path, content=content + "\n")
    ops.whole_file(name="Write /var/qmail/rc", dest=f"{platform.qmail_home}/rc", mode="755",
                   content=_rc(platform, remote))
    return {name: content or "" for name, content in control.items()}


def _rc(platform: Platform, remote: str | None) -> str:
    """qmail-send's start; QMAILREMOTE (notqmail's qmail-rspawn) names the DKIM signer (tasks/dkim.py)."""
    signer = f"QMAILREMOTE={remote} " if remote else ""
    why = f", sending through {remote}" if remote else ""
    return (f"#!/bin/sh\n# qmail-send's start: deliver to ./Maildir/ (control/defaultdelivery){why}\n"
            f"exec env - PATH=\"{platform.qmail_home}/bin:$PATH\" {signer}"
            f"qmail-start \"$(cat {platform.control_dir}/defaultdelivery)\"\n")


@deploy("qmail")
def aliases(platform: Platform, settings: Settings) -> None:
    for alias, account in sorted(settings.aliases.items()):
        ops.whole_file(
            name=f"Alias {alias} to {account}", dest=f"{platform.qmail_home}/alias/.qmail-{alias}",
            content=f"&{account}@{settings.primary_domain}\n",
        )


@deploy("qmail")
def sendmail(platform: Platform) -> None:
    """sendmail is qmail's: links (Debian), or mailwrapper's /etc/mailer.conf (NetBSD)."""
    paths = PATHS[platform.name]
    for path in paths.sendmail_links:
        ops.link(name=f"Point {path} at qmail's", path=path, target=f"{platform.qmail_home}/bin/sendmail")
    if paths.mailer_conf is not None:
        ops.whole_file(name="Point mailwrapper at qmail (/etc/mailer.conf)", dest="/etc/mailer.conf",
                       content=paths.mailer_conf)


@deploy("qmail")
def service(platform: Platform, control: dict[str, str], build: str, remote: str | None = None) -> None:
    """qmail-send: restarted when what it reads at start changes (REMOTE too: what it runs as
    qmail-remote), reloaded (HUP: it re-reads locals and virtualdomains) when only those
    change; either also when this run puts back such a file that differed on the host."""

    def rewrites(names) -> bool:
        return any(ops.differs(f"{platform.control_dir}/{name}", control[name] + "\n" if control[name] else None)
                   for name in names)

    services.declare(platform, services.Service(
        name="qmail-send", description="qmail-send, delivering the queue (locally to ./Maildir/)",
        run=render("qmail/qmail-send.run.j2", qmail_home=platform.qmail_home),
        rcd=services.Rcd("qmailsend", (
            ("postenv", f"PATH={platform.qmail_bin}:/usr/bin:/bin" + (f" QMAILREMOTE={remote}" if remote else "")),
            ("defaultdelivery", "./Maildir/"),
            *rcd.logging("send"),
        )),
        reads_at_start=(build, *(control[name] for name in READ_AT_START), *([remote] if remote else [])),
        rewritten=rewrites(READ_AT_START) or ops.differs(f"{platform.qmail_home}/rc", _rc(platform, remote)),
        reload_on=tuple(control[name] for name in READ_ON_HUP),
        reload_rewritten=rewrites(READ_ON_HUP),
    ))


# --- settings -----------------------------------------------------------------------------


def _aliases(value, values: dict) -> dict[str, str]:
    accounts = values["accounts"]
    names = {a.name for a in accounts}
    aliases = dict(mapping("aliases", value))
    if accounts:
        for alias in ALIAS_NAMES:
            aliases.setdefault(alias, accounts[0].name)
    for alias, target in aliases.items():
        if not isinstance(alias, str) or not _LOCALPART.fullmatch(alias):
            raise SettingsError("aliases", f"{alias!r} is not a valid local part",
                                "use lower-case letters, digits and . _ + -")
        if target not in names:
            raise SettingsError("aliases", f"{alias} points at {target!r}, which is not an account",
                                f"point it at one of: {', '.join(sorted(names)) or '(add an account)'}")
    missing = [a for a in ALIAS_NAMES if a not in aliases]
    if missing:
        raise SettingsError("aliases", f"{missing[0]} has nowhere to go",
                            "add an account (it becomes the default target) or set the alias")
    return aliases


def _virtualdomains(value, values: dict) -> dict[str, str]:
    entries = mapping("virtualdomains", value)
    for domain, prefix in entries.items():
        if not FQDN.fullmatch(str(domain)) or not _LOCALPART.fullmatch(str(prefix)):
            raise SettingsError("virtualdomains", f"{domain!r}: {prefix!r} is not domain: prefix",
                                "use entries like {\"lists.example.org\": \"alice-lists\"}")
        if domain in values["domains"] or domain == values["hostname"]:
            # qmail-send delivers a domain in control/locals locally and never reads its virtualdomains line.
            raise SettingsError("virtualdomains", f"{domain!r} is a local domain (domains, hostname): qmail "
                                "would never use this entry", "list it in one of domains or virtualdomains")
        names = [account.name for account in values["accounts"]]
        if not any(prefix == name or str(prefix).startswith(f"{name}-") for name in names):
            # qmail-lspawn would hand the mail to whichever system user bears the name (or bounce it).
            raise SettingsError("virtualdomains", f"{domain}: {prefix!r} names no mail account, so its mail would "
                                "go to a system user or bounce", f"use an account's name, or name-extension "
                                f"(one of: {', '.join(names) or '(add an account)'})")
    return dict(entries)


def _smtproutes(value, _values=None) -> dict[str, str]:
    entries = mapping("smtproutes", value)
    for domain, relay in entries.items():
        if (domain and not FQDN.fullmatch(str(domain))) or not re.fullmatch(r"^[a-z0-9.\[\]-]+(:\d+)?$", str(relay)):
            raise SettingsError("smtproutes", f"{domain!r}: {relay!r} is not domain: relayhost[:port]",
                                "use entries like {\"\": \"smarthost.example.net\"}")
    return dict(entries)


def _hours(value, _values=None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SettingsError("queue_max_age_hours", f"{value!r} is not a number of hours",
                            "set it to 0 or more, e.g. 24")
    return value


def _count(value, _values=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SettingsError("queue_warn_messages", f"{value!r} is not a whole number", "set it to 0 or more, e.g. 50")
    return value


ALIAS_NAMES = ("postmaster", "root", "mailer-daemon", "abuse")
_LOCALPART = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}$")


# --- status check ---------------------------------------------------------------------------


# --- Outbound TLS: qmail-remote's per-peer policy (tlshosts, notlshosts)

def tls_directories(platform: Platform) -> tuple[str, str]:
    return f"{platform.control_dir}/tlshosts", f"{platform.control_dir}/notlshosts"


@deploy("qmail")
def outbound_tls(platform: Platform, settings: Settings) -> None:
    verified_dir, plain_dir = tls_directories(platform)
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
    if not isinstance(name, str) or not FQDN.fullmatch(name.lower()):
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


def check_queue(target):
    """The queue is not piling up and nothing in it is stuck."""
    platform = target.platform
    output = target.run(render("qmail/queue.sh.j2", qmail_home=platform.qmail_home,
                               mtimes=platform.shell.find_mtimes)).split()
    count, todo, oldest = (int(n) for n in output[-3:])
    summary = f"{count} message{'s' if count != 1 else ''} ({todo} not yet preprocessed)"
    limit_hours, limit_count = target.settings.queue_max_age_hours, target.settings.queue_warn_messages
    if count and oldest > limit_hours * 3600:
        return ERROR, f"{summary}, oldest {age(oldest)} > queue_max_age_hours={limit_hours}"
    if count > limit_count:
        return WARNING, f"{summary} > queue_warn_messages={limit_count}"
    return OK, summary + (f", oldest {age(oldest)}" if count else "")


# --- status check: remote deliveries, from qmail-send's log


@dataclass(frozen=True)
class SendLog:
    """Where qmail-send's log lands: FILES, oldest first (shell globs; "{log_dir}" is the
    platform's; the last is the one being written); and how its lines begin: STAMP "tai64n"
    (multilog's @label) or "syslog" (syslogd's "Mmm dd hh:mm:ss HOST TAG:", TAG qmail-send's)."""

    files: tuple[str, ...]
    stamp: str
    tag: str = ""


# Debian: multilog's directory under daemontools (qmailhost/backends/daemontools.py: current and
# 9 older files of 1 MB, each named by the TAI64N label of its turn-over). NetBSD: qmail-run's
# rc.d script pipes it to logger (rcd.logging: tag nbqmail/send, mail.info), which NetBSD's
# syslog.conf writes to maillog in syslogd's BSD format; newsyslog turns that over daily into maillog.0.gz.
SEND_LOGS = {
    "debian": SendLog(("{log_dir}/qmail-send/@*.[su]", "{log_dir}/qmail-send/current"), "tai64n"),
    "netbsd": SendLog(("{log_dir}/maillog.0.gz", "{log_dir}/maillog"), "syslog", tag="nbqmail/send"),
}
WINDOW = 3600  # seconds looked back when the host runs no checks of its own (health_every: null)
LOG_LINES = 20_000  # the newest delivery lines read at most (a very busy day of a personal host)
# More deferrals of one domain since its last success warn. qmail-send retries a remote message
# 0, 7, 27 and 60 minutes after it was queued (400 s times the square of the attempt), so 4 is one
# message undelivered for an hour, or several waiting; a greylisting peer defers once, then accepts.
DEFERRALS = 3
TAI64_EPOCH = 2**62 + 10  # a TAI64 label's seconds at 1970-01-01 UTC, as multilog and tai64nlocal count

_TAI64N_LINE = re.compile(r"^@([0-9a-f]{24}) (.*)$")
_SYSLOG_LINE = re.compile(r"^([A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d) \S+ ([^\s\[:]+)(?:\[\d+\])?: (.*)$")
_STARTING = re.compile(r"^starting delivery (\d+): msg \d+ to (local|remote) (\S+)$")
_OUTCOME = re.compile(r"^delivery (\d+): (success|deferral|failure): ?(.*)$")


@dataclass
class DomainDeliveries:
    """One recipient domain's remote deliveries in the window, as qmail-send logged their outcome."""

    accepted: int = 0
    deferrals: int = 0
    bounced: int = 0
    deferred_since_accepted: int = 0
    last_problem: tuple[float, str] = (0.0, "")  # (when, qmail-remote's words) of its latest deferral or bounce


def tai64n_seconds(label: str) -> float:
    """UNIX time of a TAI64N label (24 hex digits, after multilog's "@"): as tai64nlocal reads it,
    the first 16 digits are TAI64_EPOCH plus the seconds, the next 8 the nanoseconds."""
    return int(label[:16], 16) - TAI64_EPOCH + int(label[16:24], 16) / 1e9


def syslog_seconds(stamp: str, now: float, zone: timezone) -> float:
    """UNIX time of a syslog stamp ("Nov  4 22:13:01": the host's local time, no year), read in
    ZONE (the host's UTC offset now: across a daylight saving change it is an hour off) and in
    the year that puts it no later than a day after NOW."""
    year = datetime.fromtimestamp(now, zone).year
    for candidate in (year, year - 1):
        try:
            when = datetime.strptime(f"{candidate} {stamp}", "%Y %b %d %H:%M:%S").replace(tzinfo=zone).timestamp()
        except ValueError:  # 29 February, in a year without one
            continue
        if when <= now + 86400:
            return when
    return float("-inf")


def read_send_log(output: str) -> tuple[float, timezone, str | None, list[str]]:
    """deliveries.sh's output: the host's clock and UTC offset, the log it found missing (None:
    there), and the delivery lines."""
    lines = output.splitlines()
    clock = lines[0].split() if lines else []
    if len(clock) != 3 or clock[0] != "now" or not clock[1].isdigit():
        raise Failed(f"qmail-send's log: no clock line from the host ({one_line(output[:80]) or 'no output'})")
    zone = datetime.strptime(clock[2], "%z").tzinfo
    missing = next((line.removeprefix("missing ") for line in lines[1:] if line.startswith("missing ")), None)
    return int(clock[1]), zone, missing, [line for line in lines[1:] if not line.startswith("missing ")]


def log_entries(lines: list[str], log: SendLog, now: float, zone: timezone) -> list[tuple[float, str]]:
    """(UNIX time, qmail-send's message) of each of its lines; others (other programs in a shared
    syslog file, a cut line) dropped."""
    entries = []
    for line in lines:
        if log.stamp == "tai64n" and (m := _TAI64N_LINE.match(line)):
            entries.append((tai64n_seconds(m[1]), m[2]))
        elif log.stamp == "syslog" and (m := _SYSLOG_LINE.match(line)) and m[2] == log.tag:
            entries.append((syslog_seconds(m[1], now, zone), m[3]))
    return entries


def remote_deliveries(entries: list[tuple[float, str]], since: float) -> dict[str, DomainDeliveries]:
    """Each recipient domain's remote deliveries whose outcome was logged at SINCE or later. An
    outcome names only its delivery's number (reused over time): the latest "starting delivery"
    line with that number says where it went."""
    started: dict[str, str | None] = {}
    domains: dict[str, DomainDeliveries] = {}
    for when, message in entries:
        if start := _STARTING.match(message):
            started[start[1]] = start[3].rpartition("@")[2].lower() if start[2] == "remote" else None
            continue
        outcome = _OUTCOME.match(message)
        if not outcome or when < since or not (domain := started.get(outcome[1])):
            continue
        tally = domains.setdefault(domain, DomainDeliveries())
        if outcome[2] == "success":
            tally.accepted += 1
            tally.deferred_since_accepted = 0
            continue
        if outcome[2] == "failure":
            tally.bounced += 1
        else:
            tally.deferrals += 1
            tally.deferred_since_accepted += 1
        tally.last_problem = (when, _report(outcome[3]))
    return domains


def _report(words: str) -> str:
    """qmail-remote's report as qmail-send logs it (spaces as "_", each line ended by "/"), readable."""
    return one_line(words.replace("_", " ").rstrip("/"), 100)


def _failing(tally: DomainDeliveries) -> str:
    return ", ".join(part for part in (f"{tally.bounced} bounced" if tally.bounced else "",
                                       f"{tally.deferred_since_accepted} deferred" if tally.deferred_since_accepted
                                       else "") if part)


def _span(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds % 3600 == 0 else f"{seconds // 60} min"


def check_deliveries(target):
    """Remote deliveries since the host last looked (health_every, else WINDOW) are not failing, as
    qmail-send logged them on the host: no bounce, and no domain deferred more than DEFERRALS
    times since its last success."""
    platform, window = target.platform, target.settings.health_every or WINDOW
    log = SEND_LOGS[platform.name]
    files = [name.format(log_dir=platform.log_dir) for name in log.files]
    now, zone, missing, lines = read_send_log(target.run(render(
        "qmail/deliveries.sh.j2", files=" ".join(files), live=files[-1], minutes=window // 60 + 2, lines=LOG_LINES)))
    if missing:
        return WARNING, f"{missing} is missing: qmail-send's deliveries cannot be seen"
    domains = remote_deliveries(log_entries(lines, log, now, zone), now - window)
    failing = sorted((domain for domain, tally in domains.items()
                      if tally.bounced or tally.deferred_since_accepted > DEFERRALS),
                     key=lambda domain: (-domains[domain].bounced, -domains[domain].deferred_since_accepted, domain))
    if failing:
        named = ", ".join(f"{domain} {_failing(domains[domain])}" for domain in failing[:3])
        more = f" and {len(failing) - 3} more" if len(failing) > 3 else ""
        last = max(failing, key=lambda domain: domains[domain].last_problem[0])
        return WARNING, (f"remote deliveries failing in the last {_span(window)}: {named}{more}; "
                         f"last, to {last}: {domains[last].last_problem[1]}")
    accepted, deferrals = sum(t.accepted for t in domains.values()), sum(t.deferrals for t in domains.values())
    count = accepted + deferrals  # (no bounce, or it would be failing)
    if not count:
        return OK, f"no remote deliveries in the last {_span(window)}"
    return OK, (f"{count} remote deliver{'y' if count == 1 else 'ies'} in the last {_span(window)}: "
                f"{accepted} accepted" + (f", {deferrals} deferred" if deferrals else ""))


COMPONENT = Component(
    name="qmail",
    needs=lambda platform, _settings: NEEDS[platform.name],
    settings=(
        Setting("aliases", {}, _aliases,
                "`~alias/.qmail-NAME` forwards; default: postmaster, root, mailer-daemon, abuse → first account"),
        Setting("virtualdomains", {}, _virtualdomains,
                "`control/virtualdomains` entries (`{\"lists.example.org\": \"alice-lists\"}`)"),
        Setting("smtproutes", {}, _smtproutes, "`control/smtproutes` entries (`{\"\": \"smarthost.example.net\"}`)"),
        Setting("databytes", 20_000_000, whole_number("databytes", 1_000, 2**31 - 1),
                "largest message accepted (bytes)"),
        Setting("concurrency_remote", 20, whole_number("concurrency_remote", 1, 120),
                "qmail-send's parallel remote deliveries"),
        Setting("concurrency_local", 10, whole_number("concurrency_local", 1, 120),
                "qmail-send's parallel local deliveries"),
        Setting("tlshosts", {}, parse_tlshosts,
                "outbound TLS: peers whose certificate must verify, `{\"mx.example.net\": \"~/ca.pem\"}` "
                "(CA file on the laptop); others: opportunistic"),
        Setting("notlshosts", [], parse_notlshosts,
                "outbound TLS: peers sent to without TLS (their STARTTLS is broken; else their mail waits)"),
        Setting("queue_max_age_hours", 24, _hours, "status check error when the oldest queued message is older"),
        Setting("queue_warn_messages", 50, _count, "status check warning when more messages wait in the queue"),
    ),
    managed_roots=lambda p: (f"2:{p.control_dir}", f"1:{p.qmail_home}/alias", f"0:{p.qmail_home}/rc",
                             *(f"0:{link}" for link in PATHS[p.name].sendmail_links)),
    listeners=lambda settings: (Listener("qmail-send", "qmailsend", "queue delivery", None, public=False),),
    checks=(check_queue, check_deliveries),
)
