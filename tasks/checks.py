"""Status checks: does the host work, seen from outside, the way a person would check it.

Run on their own (``pyinfra inventory/<site>.py verify.py``) or at the end of a deploy
(``after_deploy``, unless ``verify_after_deploy`` is off). Either way they are one
pyinfra python callback operation, so they run at execution time, after every other
operation, from the laptop: SMTP, TLS and DNS with the standard library against the
host's address, and a few read-only commands over SSH (svstat, the queue, leftovers).

Built from a table of services (name, port, public or loopback only) and a flat list
of small ``check_*`` functions, each returning (status, one-line reason), status one
of ok, warning, error, skipped. A summary table ends the run; any error fails the
operation, so pyinfra exits non-zero. Passwords, hashes and keys are never printed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import smtplib
import socket
import ssl
import struct
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.state import BaseStateCallback
from pyinfra.operations import python

from tasks.facts import MODE_FILE
from tasks.platform import Platform
from tasks.settings import Settings, SettingsError
from tasks.templates import render

OK, WARNING, ERROR, SKIPPED = "ok", "warning", "error", "skipped"
OPERATION_NAME = "Check the mail host from outside"

# The checks' own settings, with their defaults (the README's settings table lists them).
DEFAULTS: dict = {
    # Run the checks at the end of every deploy (verify.py always runs them).
    "verify_after_deploy": True,
    # An account the checks log in with on the submission port: {"name": "alice"} (its
    # password as in accounts), or with its own "password_env" / "password_file".
    # Unset: the checks that need a password are skipped, and say so.
    "verify_account": None,
    # The queue: an error when its oldest message is older than this many hours, a
    # warning when more than this many messages wait.
    "queue_max_age_hours": 24,
    "queue_warn_messages": 50,
}

TIMEOUT = 20  # seconds per network step (covers spamdyke's greeting delay)
DNS_TIMEOUT = 2  # seconds: a laptop without DNS is told so quickly
CERT_WARN_DAYS, CERT_ERROR_DAYS = 21, 7
SUPERVISION_WAIT = 15  # seconds for svscan (5 s scans) to start services a deploy just linked
LAPTOP = "qmailhost-verify.invalid"  # our EHLO name: never looked up anywhere
STRANGER = "qmailhost-verify@example.com"  # a sender from elsewhere
# A recipient elsewhere (accepting it from a stranger is relaying): under .invalid, so no
# host can ever have it among its own domains.
FOREIGN = "relay-test@relay-check.qmailhost.invalid"
# Names no public DNS serves (RFC 2606, 6761, 6762, 8375): nothing to look up.
RESERVED_DOMAINS = ("test", "example", "invalid", "localhost", "local", "home.arpa",
                    "example.com", "example.net", "example.org")


# --- settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyAccount:
    name: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Options:
    verify_after_deploy: bool
    account: VerifyAccount | None
    queue_max_age_hours: float
    queue_warn_messages: int

    @classmethod
    def from_host_data(cls, data: dict, settings: Settings) -> Options:
        """Validate the checks' settings, or raise SettingsError (one line)."""
        raw = {key: data.get(key, default) for key, default in DEFAULTS.items()}
        if not isinstance(raw["verify_after_deploy"], bool):
            raise SettingsError("verify_after_deploy", f"{raw['verify_after_deploy']!r} is not true or false",
                                "set verify_after_deploy=true or false")
        age = raw["queue_max_age_hours"]
        if isinstance(age, bool) or not isinstance(age, int | float) or age < 0:
            raise SettingsError("queue_max_age_hours", f"{age!r} is not a number of hours",
                                "set it to 0 or more, e.g. 24")
        count = raw["queue_warn_messages"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise SettingsError("queue_warn_messages", f"{count!r} is not a whole number",
                                "set it to 0 or more, e.g. 50")
        return cls(raw["verify_after_deploy"], _verify_account(raw["verify_account"], settings), age, count)


def _verify_account(value, settings: Settings) -> VerifyAccount | None:
    if value is None:
        return None
    entry = {"name": value} if isinstance(value, str) else value
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise SettingsError("verify_account", f"{value!r} names no account",
                            "set it to {\"name\": \"alice\"} (plus password_env or password_file)")
    if "password" in entry:
        raise SettingsError("verify_account", "passwords never go into the inventory",
                            "use \"password_env\" or \"password_file\"")
    password = _password_from(entry)
    if password is None:
        known = {a.name: a.password for a in settings.accounts}
        if entry["name"] not in known:
            raise SettingsError("verify_account", f"{entry['name']!r} is not in accounts and has no password source",
                                "add \"password_env\" or \"password_file\"")
        password = known[entry["name"]]
    return VerifyAccount(entry["name"], password)


def _password_from(entry: dict) -> str | None:
    """The password named by password_env or password_file; None when neither is set."""
    if entry.get("password_env"):
        password = os.environ.get(entry["password_env"], "")
        if not password:
            raise SettingsError("verify_account", f"environment variable {entry['password_env']} is empty",
                                f"export {entry['password_env']}=... before running pyinfra")
        return password
    if entry.get("password_file"):
        path = Path(os.path.expanduser(entry["password_file"]))
        try:
            password = path.read_text().strip("\n")
        except OSError as error:
            raise SettingsError("verify_account", f"password file {path} cannot be read ({error.strerror})",
                                "create it (mode 600) or fix password_file") from None
        if not password:
            raise SettingsError("verify_account", f"password file {path} is empty", "write the password into it")
        return password
    return None


# --- the services ------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    name: str  # its daemontools service directory
    role: str
    port: int | None  # None: listens on no port
    public: bool  # reachable from the Internet, or loopback only


def services(settings: Settings) -> tuple[Service, ...]:
    return (
        Service("qmail-smtpd", "SMTP from the Internet", settings.smtp_port, public=True),
        Service("stunnel", "submission (STARTTLS)", settings.submission_port, public=True),
        Service("qmail-ofmipd", "ofmipd behind stunnel", settings.ofmipd_port, public=False),
        Service("qmail-send", "queue delivery", None, public=False),
    )


# --- what the checks look at -------------------------------------------------------------


class Failed(Exception):
    """A check cannot go on: its message is the one-line reason (an error)."""


@dataclass
class Target:
    """The host as the checks see it: its settings, its address, and a read-only shell."""

    settings: Settings
    platform: Platform
    options: Options
    address: str  # where the laptop reaches the host
    shell: Callable[[str], tuple[bool, str]] = field(repr=False)

    @property
    def services(self) -> tuple[Service, ...]:
        return services(self.settings)

    def port(self, service: str) -> int:
        return next(s.port for s in self.services if s.name == service)

    def run(self, command: str) -> str:
        """COMMAND's output on the host, or Failed."""
        ok, output = self.shell(command)
        if not ok:
            raise Failed(f"on the host, {command.split()[0]} failed: {_one_line(output) or 'no output'}")
        return output

    @cached_property
    def certificate(self) -> bytes:
        """The certificate the submission port offers after STARTTLS (DER)."""
        with self.submission(tls_context()) as client:
            return client.sock.getpeercert(binary_form=True)

    @cached_property
    def dns(self) -> Dns:
        return Dns(resolv_conf_server())

    @contextlib.contextmanager
    def smtp(self, port: int):
        client = smtplib.SMTP(self.address, port, local_hostname=LAPTOP, timeout=TIMEOUT)
        try:
            yield client
        finally:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
            client.close()

    @contextlib.contextmanager
    def submission(self, context: ssl.SSLContext):
        """A session on the submission port after STARTTLS and a second EHLO."""
        with self.smtp(self.port("stunnel")) as client:
            client.ehlo()
            client.starttls(context=context)
            client.ehlo()
            yield client


def tls_context(maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context that accepts any certificate (the checks judge it themselves),
    and with MAXIMUM, one that offers nothing newer, down to the oldest TLS."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if maximum:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            context.maximum_version = maximum
    return context


# --- the checks ----------------------------------------------------------------------------


def check_public_ports_answer(target: Target):
    """Every public service answers with an SMTP greeting."""
    answers = []
    for service in target.services:
        if service.public and service.port:
            with target.smtp(service.port) as client:
                code, _ = client.ehlo()
            if code != 250:
                return ERROR, f"port {service.port} ({service.role}) answered EHLO with {code}"
            answers.append(str(service.port))
    return OK, f"ports {', '.join(answers)} answer"


def check_loopback_ports_closed(target: Target):
    """Loopback-only services cannot be reached from outside."""
    closed = []
    for service in target.services:
        if service.port and not service.public:
            try:
                socket.create_connection((target.address, service.port), timeout=5).close()
            except OSError:
                closed.append(str(service.port))
                continue
            return ERROR, f"port {service.port} ({service.role}) accepts connections from outside"
    return OK, f"port {', '.join(closed)} not reachable from outside"


def check_smtp_refuses_relay(target: Target):
    """Port 25 takes mail for the local domains and refuses to relay for a stranger."""
    local = f"postmaster@{target.settings.primary_domain}"
    with target.smtp(target.port("qmail-smtpd")) as client:
        client.ehlo()
        code, reply = client.mail(STRANGER)
        if code != 250:
            return ERROR, f"MAIL FROM a stranger answered {code} {_text(reply)}"
        local_code, local_reply = client.rcpt(local)
        foreign_code, foreign_reply = client.rcpt(FOREIGN)
    if 200 <= foreign_code < 300:
        return ERROR, f"open relay: RCPT to a foreign domain accepted ({foreign_code}) from a stranger"
    if local_code != 250:
        return WARNING, f"every recipient refused, even {local} ({local_code} {_text(local_reply)})"
    if foreign_code < 500:
        return WARNING, f"relaying refused only temporarily ({foreign_code} {_text(foreign_reply)})"
    return OK, f"takes mail for {local}, refuses relaying ({foreign_code})"


def check_submission_starttls_first(target: Target):
    """The submission port offers STARTTLS and no AUTH before it."""
    with target.smtp(target.port("stunnel")) as client:
        client.ehlo()
        offered = set(client.esmtp_features)
    if "auth" in offered:
        return ERROR, "AUTH is offered before STARTTLS: passwords could cross in the clear"
    if "starttls" not in offered:
        return ERROR, "STARTTLS is not offered"
    return OK, "offers STARTTLS, no AUTH before it"


def check_submission_requires_auth(target: Target):
    """After STARTTLS, nobody sends without AUTH."""
    with target.submission(tls_context()) as client:
        version = client.sock.version()
        code, reply = client.mail(STRANGER)
        if code >= 500:
            return OK, f"after STARTTLS ({version}), MAIL without AUTH refused ({code})"
        rcpt_code, _ = client.rcpt(FOREIGN)
    if rcpt_code >= 500:
        return OK, f"after STARTTLS ({version}), RCPT without AUTH refused ({rcpt_code})"
    return ERROR, f"mail accepted without AUTH (MAIL {code}, RCPT {rcpt_code})"


def check_wrong_password_refused(target: Target):
    """AUTH with a wrong password fails with 535."""
    account = target.options.account
    if account is None:
        return SKIPPED, "no verify_account in the inventory"
    code = _auth(target, account.name, "wrong-" + secrets.token_hex(8))
    if code == 235:
        return ERROR, f"a wrong password for {account.name} was accepted"
    if code != 535:
        return ERROR, f"a wrong password for {account.name} got {code}, not 535"
    return OK, f"a wrong password for {account.name} fails (535)"


def check_account_can_submit(target: Target):
    """The test account logs in and may send."""
    account = target.options.account
    if account is None:
        return SKIPPED, "no verify_account in the inventory"
    address = f"{account.name}@{target.settings.primary_domain}"
    with target.submission(tls_context()) as client:
        client.user, client.password = account.name, account.password
        code, _ = client.auth("PLAIN", client.auth_plain, initial_response_ok=True)
        mail_code, _ = client.mail(address)
        rcpt_code, _ = client.rcpt(FOREIGN)
        client.rset()
    if (mail_code, rcpt_code) != (250, 250):
        return ERROR, f"{account.name} logged in ({code}) but MAIL/RCPT got {mail_code}/{rcpt_code}"
    return OK, f"{account.name} logs in (AUTH PLAIN {code}) and may send (nothing sent)"


def check_old_tls_refused(target: Target):
    """TLS below 1.2 is refused on the submission port."""
    try:
        with target.submission(tls_context(maximum=ssl.TLSVersion.TLSv1_1)) as client:
            version = client.sock.version()
    except (ssl.SSLError, ConnectionResetError) as error:
        if "NO_PROTOCOLS_AVAILABLE" in str(error) or "NO_SUPPORTED_VERSIONS" in str(error):
            return SKIPPED, "this laptop's OpenSSL cannot offer TLS 1.0 or 1.1"
        return OK, f"TLS 1.0 and 1.1 refused ({getattr(error, 'reason', None) or type(error).__name__})"
    return ERROR, f"the submission port accepts {version}"


def check_certificate_name(target: Target):
    """The certificate names the host (SAN, or CN without one)."""
    hostname = target.settings.hostname
    text = _openssl_x509(target.certificate, "-subject", "-issuer", "-checkhost", hostname, "-nameopt", "RFC2253")
    if text is None:
        return SKIPPED, "no openssl on this laptop to read the certificate"
    if "does match certificate" not in text:
        return ERROR, f"the certificate does not name {hostname} ({_field(text, 'subject')})"
    self_signed = _field(text, "subject") == _field(text, "issuer")
    return OK, f"names {hostname}" + (" (self-signed)" if self_signed else f", issued by {_field(text, 'issuer')}")


def check_certificate_expiry(target: Target):
    """The certificate is not about to expire."""
    text = _openssl_x509(target.certificate, "-enddate")
    if text is None:
        return SKIPPED, "no openssl on this laptop to read the certificate"
    not_after = _field(text, "notAfter")
    days = int((ssl.cert_time_to_seconds(not_after) - time.time()) // 86400)
    if days < 0:
        return ERROR, f"expired {-days} days ago ({not_after})"
    if days < CERT_ERROR_DAYS:
        return ERROR, f"expires in {days} days ({not_after})"
    if days < CERT_WARN_DAYS:
        return WARNING, f"expires in {days} days ({not_after})"
    return OK, f"expires in {days} days"


def check_services_up(target: Target):
    """Every service (and its log) is supervised and up, and not restarting over and over."""
    wanted = [f"{target.platform.service_dir}/{s.name}{log}" for s in target.services for log in ("", "/log")]
    status = _svstat_settled(target, wanted)
    problems = [f"{_short(path)} {status.get(path, 'is missing')}" for path in wanted
                if not status.get(path, "").startswith("up")]
    if problems:
        return ERROR, "; ".join(problems)
    young = [path for path in wanted if _uptime(status[path]) < 3]
    if young:
        time.sleep(3)
        again = _svstat(target, young)
        restarting = [_short(path) for path in young if _pid(again.get(path, "")) != _pid(status[path])]
        if restarting:
            return ERROR, f"restarting over and over: {', '.join(restarting)}"
    uptimes = ", ".join(f"{s.name} {_age(_uptime(status[f'{target.platform.service_dir}/{s.name}']))}"
                        for s in target.services)
    return OK, f"all up: {uptimes}"


def check_submission_mode(target: Target):
    """The submission mode active on the host is the one asked for."""
    active = target.run(f"cat {MODE_FILE} 2>/dev/null || true").strip()
    wanted = target.settings.submission
    if not active:
        return ERROR, f"no mode recorded in {MODE_FILE} (asked for {wanted})"
    if active != wanted:
        return ERROR, f"mode {active} is active, {wanted} was asked for"
    return OK, f"mode {active}"


def check_no_tmda_leftovers(target: Target):
    """No piece of TMDA remains once its mode is retired."""
    if target.settings.submission == "tmda":
        return SKIPPED, "the tmda mode is active"
    platform = target.platform
    script = render("checks/tmda-leftovers.sh", service_dir=platform.service_dir,
                    supervise_dir=platform.supervise_dir, qmail_home=platform.qmail_home,
                    config_dir=platform.config_dir)
    found = [line for line in target.run(script).splitlines() if line.strip()]
    if found:
        return ERROR, f"TMDA left behind: {', '.join(found)}"
    return OK, "no TMDA piece left"


def check_queue(target: Target):
    """The queue is not piling up and nothing in it is stuck."""
    output = target.run(render("checks/queue.sh", qmail_home=target.platform.qmail_home)).split()
    count, todo, oldest = (int(n) for n in output[-3:])
    summary = f"{count} message{'s' if count != 1 else ''} ({todo} not yet preprocessed)"
    if count and oldest > target.options.queue_max_age_hours * 3600:
        return ERROR, f"{summary}, oldest {_age(oldest)} > queue_max_age_hours={target.options.queue_max_age_hours}"
    if count > target.options.queue_warn_messages:
        return WARNING, f"{summary} > queue_warn_messages={target.options.queue_warn_messages}"
    return OK, summary + (f", oldest {_age(oldest)}" if count else "")


def check_dns_mx(target: Target):
    """Each domain's MX points at the host."""
    if skip := _dns_skip(target):
        return skip
    hostname = target.settings.hostname
    wrong = []
    for domain in target.settings.domains:
        exchanges = target.dns.lookup(domain, "MX")
        if hostname not in exchanges:
            wrong.append(f"{domain} MX {', '.join(exchanges) or 'missing'}")
    if wrong:
        return ERROR, f"not pointing at {hostname}: {'; '.join(wrong)}"
    return OK, f"MX of {', '.join(target.settings.domains)} point at {hostname}"


def check_dns_address(target: Target):
    """The host name has an address, the one the laptop reaches."""
    if skip := _dns_skip(target):
        return skip
    hostname = target.settings.hostname
    addresses = _addresses(target)
    if not addresses:
        return ERROR, f"{hostname} has no A or AAAA record"
    if _is_ip(target.address) and target.address not in addresses:
        return WARNING, f"{hostname} is {', '.join(addresses)}, but the host was reached at {target.address}"
    return OK, f"{hostname} is {', '.join(addresses)}"


def check_dns_ptr(target: Target):
    """Each of the host's addresses points back at its name (receivers check this)."""
    if skip := _dns_skip(target):
        return skip
    hostname = target.settings.hostname
    if not _addresses(target):
        return SKIPPED, f"{hostname} has no address to look up (see dns_address)"
    wrong = [f"{address} -> {', '.join(names) or 'no PTR'}" for address in _addresses(target)
             if hostname not in (names := target.dns.lookup(ipaddress.ip_address(address).reverse_pointer, "PTR"))]
    if wrong:
        # Behind a smarthost, other servers never see this host's PTR.
        status = WARNING if "" in target.settings.smtproutes else ERROR
        return status, f"not pointing back at {hostname}: {'; '.join(wrong)}"
    return OK, f"PTR of each address is {hostname}"


def check_dns_spf(target: Target):
    """Each domain publishes an SPF record."""
    if skip := _dns_skip(target):
        return skip
    missing = [domain for domain in target.settings.domains
               if not any(txt.startswith("v=spf1") for txt in target.dns.lookup(domain, "TXT"))]
    if missing:
        return WARNING, f"no SPF TXT record for {', '.join(missing)}"
    return OK, f"SPF TXT present for {', '.join(target.settings.domains)}"


CHECKS: tuple[Callable[[Target], tuple[str, str]], ...] = (
    check_services_up,  # first: it waits for services a deploy has just enabled
    check_public_ports_answer,
    check_smtp_refuses_relay,
    check_submission_starttls_first,
    check_submission_requires_auth,
    check_wrong_password_refused,
    check_account_can_submit,
    check_loopback_ports_closed,
    check_old_tls_refused,
    check_certificate_name,
    check_certificate_expiry,
    check_submission_mode,
    check_no_tmda_leftovers,
    check_queue,
    check_dns_mx,
    check_dns_address,
    check_dns_ptr,
    check_dns_spf,
)


def check_name(check: Callable) -> str:
    return check.__name__.removeprefix("check_")


# --- helpers of the checks ----------------------------------------------------------------


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _text(reply: bytes) -> str:
    return _one_line(reply.decode(errors="replace"), 80)


def _auth(target: Target, user: str, password: str) -> int:
    with target.submission(tls_context()) as client:
        client.user, client.password = user, password
        try:
            code, _ = client.auth("PLAIN", client.auth_plain, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as error:
            code = error.smtp_code
    return code


def _openssl_x509(der: bytes, *args: str) -> str | None:
    """openssl x509 on this laptop over a certificate (public data); None without openssl."""
    with tempfile.NamedTemporaryFile(suffix=".der") as file:
        file.write(der)
        file.flush()
        try:
            result = subprocess.run(["openssl", "x509", "-inform", "DER", "-in", file.name, "-noout", *args],
                                    capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=TIMEOUT)
        except FileNotFoundError:
            return None
    if result.returncode != 0:
        raise Failed(f"openssl cannot read the certificate: {_one_line(result.stderr)}")
    return result.stdout


def _field(text: str, name: str) -> str:
    match = re.search(rf"^{name}\s*=\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "?"


_SVSTAT = re.compile(r"^(?P<path>\S+): (?P<status>.*)$")


def _svstat(target: Target, paths: list[str]) -> dict[str, str]:
    """path -> svstat's words for it ("up (pid 12) 40 seconds", "down 3 seconds, ...")."""
    output = target.run(f"svstat {' '.join(paths)} 2>&1; true")
    return {m["path"]: m["status"] for line in output.splitlines() if (m := _SVSTAT.match(line))}


def _svstat_settled(target: Target, paths: list[str]) -> dict[str, str]:
    """svstat, once svscan has started every service (it looks for new ones every 5 s)
    and supervise has started those that want to be up: a deploy may have just linked them."""
    deadline = time.monotonic() + SUPERVISION_WAIT
    while True:
        status = _svstat(target, paths)
        starting = [p for p in paths if "supervise/ok" in status.get(p, "") or "want up" in status.get(p, "")]
        if not starting or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _uptime(status: str) -> int:
    match = re.search(r"(\d+) seconds", status)
    return int(match.group(1)) if match else 0


def _pid(status: str) -> str | None:
    match = re.search(r"\(pid (\d+)\)", status)
    return match.group(1) if match else None


def _short(path: str) -> str:
    return path.rsplit("/", 2)[-2] + "/log" if path.endswith("/log") else path.rsplit("/", 1)[-1]


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds // 86400} days"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _reserved(name: str) -> str | None:
    return next((suffix for suffix in RESERVED_DOMAINS if name == suffix or name.endswith("." + suffix)), None)


def _dns_skip(target: Target) -> tuple[str, str] | None:
    """A skipped result when there is no public DNS to ask about these names."""
    names = [target.settings.hostname, *target.settings.domains]
    if all(_reserved(name) for name in names):
        return SKIPPED, f"no DNS for {target.settings.hostname}: .{_reserved(names[0])} is reserved, never public"
    if reason := target.dns.unreachable:
        return SKIPPED, f"no DNS: {reason}"
    return None


def _addresses(target: Target) -> list[str]:
    hostname = target.settings.hostname
    return target.dns.lookup(hostname, "A") + target.dns.lookup(hostname, "AAAA")


# --- a minimal stub resolver (standard library only) --------------------------------------


class DnsError(Exception):
    pass


RECORD_TYPES = {"A": 1, "NS": 2, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28}


def resolv_conf_server(path: str = "/etc/resolv.conf") -> str | None:
    """The first nameserver in resolv.conf, or None."""
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                return words[1]
    return None


class Dns:
    """Ask one recursive resolver over UDP, DNS_TIMEOUT seconds per question. Enough for
    the checks (A, AAAA, MX, TXT, PTR), without a dependency."""

    def __init__(self, server: str | None, port: int = 53, timeout: float = DNS_TIMEOUT):
        self.server, self.port, self.timeout = server, port, timeout

    @cached_property
    def unreachable(self) -> str | None:
        """Why there is no DNS to ask (None: there is), found out once, quickly."""
        if self.server is None:
            return "no nameserver in /etc/resolv.conf"
        try:
            self.lookup(".", "NS")
        except (OSError, DnsError) as error:
            return f"the resolver {self.server} did not answer within {self.timeout:g} s ({_one_line(error, 60)})"
        return None

    def lookup(self, name: str, rtype: str) -> list[str]:
        """The records of TYPE for NAME (names lower-case, without the final dot)."""
        ident = secrets.randbelow(65536)
        query = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + _encode_name(name)
        query += struct.pack("!2H", RECORD_TYPES[rtype], 1)
        family = socket.AF_INET6 if ":" in self.server else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect((self.server, self.port))
            sock.send(query)
            deadline = time.monotonic() + self.timeout
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                reply = sock.recv(65535)
                if len(reply) >= 12 and struct.unpack_from("!H", reply)[0] == ident:
                    return _parse_reply(reply, RECORD_TYPES[rtype])


def _encode_name(name: str) -> bytes:
    labels = [label for label in name.rstrip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label.encode("idna") for label in labels) + b"\0"


def _parse_reply(reply: bytes, rtype: int) -> list[str]:
    _, flags, questions, answers, _, _ = struct.unpack_from("!6H", reply)
    rcode = flags & 0x000F
    if rcode == 3:  # NXDOMAIN
        return []
    if rcode:
        raise DnsError(f"the resolver answered rcode {rcode}")
    offset = 12
    for _ in range(questions):
        offset = _read_name(reply, offset)[1] + 4
    records = []
    for _ in range(answers):
        offset = _read_name(reply, offset)[1]
        kind, _, _, length = struct.unpack_from("!HHIH", reply, offset)
        offset += 10
        if kind == rtype:
            records.append(_decode_record(reply, offset, length, kind))
        offset += length
    return records


def _decode_record(reply: bytes, offset: int, length: int, kind: int) -> str:
    data = reply[offset: offset + length]
    if kind == RECORD_TYPES["A"]:
        return socket.inet_ntop(socket.AF_INET, data)
    if kind == RECORD_TYPES["AAAA"]:
        return socket.inet_ntop(socket.AF_INET6, data)
    if kind == RECORD_TYPES["MX"]:
        return _read_name(reply, offset + 2)[0]
    if kind == RECORD_TYPES["TXT"]:
        strings, at = [], 0
        while at < len(data):
            strings.append(data[at + 1: at + 1 + data[at]].decode(errors="replace"))
            at += 1 + data[at]
        return "".join(strings)
    return _read_name(reply, offset)[0]  # NS, PTR


def _read_name(reply: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) name at OFFSET, and the offset just after it."""
    labels, end = [], None
    for _ in range(128):  # a bound against pointer loops
        length = reply[offset]
        if length & 0xC0 == 0xC0:
            end = offset + 2 if end is None else end
            offset = ((length & 0x3F) << 8) | reply[offset + 1]
            continue
        offset += 1
        if length == 0:
            break
        labels.append(reply[offset: offset + length].decode(errors="replace").lower())
        offset += length
    return ".".join(labels), end if end is not None else offset


# --- running them ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    name: str
    status: str
    reason: str


def run_checks(target: Target, checks=CHECKS) -> list[Result]:
    results = []
    for check in checks:
        try:
            status, reason = check(target)
        except Failed as failure:
            status, reason = ERROR, _one_line(failure)
        except (OSError, smtplib.SMTPException, DnsError) as error:
            status, reason = ERROR, _one_line(f"{type(error).__name__}: {error}")
        results.append(Result(check_name(check), status, reason))
    return results


def summary_table(title: str, results: list[Result]) -> list[str]:
    width = max(len(r.name) for r in results)
    lines = [f"--> {title}", f"{'check':{width}}  {'status':8} reason"]
    lines += [f"{r.name:{width}}  {r.status:8} {r.reason}" for r in results]
    counts = {s: sum(r.status == s for r in results) for s in (OK, WARNING, ERROR, SKIPPED)}
    lines.append(f"{len(results)} checks: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return lines


def _callback(settings: Settings, platform: Platform, options: Options):
    """The python.call function: runs the checks at execution time; False fails the operation."""

    def check_mail_host(state, host) -> bool:
        arguments = _connector_arguments(state, host)

        def shell(command: str) -> tuple[bool, str]:
            ok, output = host.run_shell_command(command, print_output=False, **arguments)
            return ok, output.stdout if ok else output.output

        address = host.data.get("ssh_hostname") or host.name
        target = Target(settings, platform, options, address, shell)
        results = run_checks(target)
        for line in summary_table(f"Status checks of {settings.hostname} (at {address})", results):
            logger.info(line)
        errors = [r.name for r in results if r.status == ERROR]
        if errors:
            host.log_styled(f"status checks failed: {', '.join(errors)}", fg="red", log_func=logger.error)
        return not errors

    return check_mail_host


def _connector_arguments(state, host) -> dict:
    """The connector arguments (sudo, su, ...) operations get, for the SSH commands."""
    arguments, _ = pop_global_arguments(state, host, {})
    return {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}


def verify(settings: Settings, platform: Platform, options: Options | None = None) -> None:
    """Add the checks: one operation, run after every operation added before it."""
    options = options or Options.from_host_data(host.data.dict(), settings)
    python.call(name=OPERATION_NAME, function=_callback(settings, platform, options))


def after_deploy(settings: Settings, platform: Platform) -> None:
    """deploy.py's last step: the checks, unless verify_after_deploy is off.

    Not an operation: an operation that always runs would make every deploy report a
    change and every dry run predict one. The checks run when the deploy's last
    operation has ended (never in a dry run); an error fails the host, so pyinfra
    exits non-zero."""
    options = Options.from_host_data(host.data.dict(), settings)
    if options.verify_after_deploy:
        _AfterDeploy.register(host._get_module(), _callback(settings, platform, options))


class _AfterDeploy(BaseStateCallback):
    pending: dict = {}

    def __init__(self, state):
        self.state = state

    @classmethod
    def register(cls, target_host, function) -> None:
        state = target_host.state
        if not any(isinstance(h, cls) for h in state.callback_handlers):
            cls.pending = {}
            state.add_callback_handler(cls(state))
        cls.pending[target_host] = function

    def operation_end(self, state, op_hash):
        if op_hash != state.get_op_order()[-1]:
            return
        for target_host, function in self.pending.items():
            if target_host not in state.failed_hosts and not function(state, target_host):
                state.failed_hosts.add(target_host)
