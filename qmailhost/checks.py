"""Status checks: does the host work, seen from outside, the way a person would check it.

Run on their own (``pyinfra inventory/<site>.py verify.py``) or at the end of a deploy
(``after_deploy``, unless ``verify_after_deploy`` is off). Either way they run at
execution time, after every other operation, from the laptop: SMTP, TLS and DNS with
the standard library against the host's address, and a few read-only commands over SSH
in the platform's own dialect (its service backend's status, the queue, leftovers).

Each component declares its checks beside its code (qmailhost/component.py); this module
holds what they share (``Target``: the host as the checks see it), the checks over
every component's services (up, ports answering, loopback ports closed) and the runner:
the services check first (it waits for services a deploy has just enabled), then every
other check side by side, since they are independent probes; results keep the table's
order. Each returns (status, one-line reason), status one of ok, warning, error,
skipped. A summary table ends the run; any error fails it, so pyinfra exits non-zero.
Passwords, hashes and keys are never printed.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import smtplib
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

from pyinfra import host, logger
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, pop_global_arguments
from pyinfra.api.state import BaseStateCallback
from pyinfra.operations import python

from qmailhost import sources
from qmailhost.component import Component, Listener, Setting, TlsPort
from qmailhost.dns_lookup import Dns, DnsError, resolv_conf_server
from qmailhost.facts import HostState
from qmailhost.platform import Platform
from qmailhost.registry import for_platform
from qmailhost.settings import Settings, SettingsError, boolean, password_from

OK, WARNING, ERROR, SKIPPED = "ok", "warning", "error", "skipped"
# What a session with a TLS port can raise besides ssl.SSLError (an OSError) on the way.
SESSION_ERRORS = (OSError, smtplib.SMTPException, imaplib.IMAP4.error, poplib.error_proto)
OPERATION_NAME = "Check the mail host from outside"

TIMEOUT = 20  # seconds per network step (covers spamdyke's greeting delay)
SUPERVISION_WAIT = 15  # seconds for services a deploy just enabled to start (svscan scans every 5 s)
STEADY = 3  # seconds up, with one pid, that make a service steady
SETTLE = 12  # seconds a young service (just restarted, maybe repaired) gets to become steady
PARALLEL = 8  # checks at once
LAPTOP = "qmailhost-verify.invalid"  # our EHLO name: never looked up anywhere
STRANGER = "qmailhost-verify@example.com"  # a sender from elsewhere
# A recipient elsewhere (accepting it from a stranger is relaying): under .invalid, so no
# host can ever have it among its own domains.
FOREIGN = "relay-test@relay-check.qmailhost.invalid"


# --- the checks' settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyAccount:
    name: str
    password: str = field(repr=False)


def _verify_account(value, values: dict) -> VerifyAccount | None:
    if value is None:
        return None
    entry = {"name": value} if isinstance(value, str) else value
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise SettingsError("verify_account", f"{value!r} names no account",
                            "set it to {\"name\": \"alice\"} (plus password_env or password_file)")
    source = password_from("verify_account", entry)
    if source is None:
        known = {a.name: a.password for a in values["accounts"]}
        if entry["name"] not in known:
            raise SettingsError("verify_account", f"{entry['name']!r} is not in accounts and has no password source",
                                "add \"password_env\" or \"password_file\"")
        return VerifyAccount(entry["name"], known[entry["name"]])
    return VerifyAccount(entry["name"], source[1])


# --- what the checks look at -------------------------------------------------------------


def login_account(target) -> tuple[VerifyAccount | None, str]:
    """(verify_account, "") for the checks that log in; (None, why they skip) without one, and in
    the host's own scheduled runs (the host keeps no password: those run from the laptop)."""
    if target.settings.verify_account is None:
        return None, "no verify_account in the inventory"
    if target.on_host:
        return None, "logs in from the laptop only (the host keeps no password)"
    return target.settings.verify_account, ""


class Failed(Exception):
    """A check cannot go on: its message is the one-line reason (an error)."""


@dataclass
class Target:
    """The host as the checks see it: its settings, its address, and a read-only shell."""

    settings: Settings
    platform: Platform
    address: str  # where the laptop reaches the host
    shell: Callable[[str], tuple[bool, str]] = field(repr=False)
    _shell_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # the inventory's data and name for this host (how the laptop reaches it and its backups)
    inventory: tuple[dict, str] | None = field(default=None, repr=False)
    # True in the host's own scheduled run (tasks/health.py): the shell is local, the address
    # its own, and no laptop's file or password is at hand (a check that needs one skips)
    on_host: bool = False
    _handshake_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _handshakes: dict | None = field(default=None, repr=False)

    @cached_property
    def listeners(self) -> tuple[Listener, ...]:
        """Every service the components run, as the checks see them."""
        return tuple(listener for component in for_platform(self.platform)
                     for listener in component.listeners(self.settings))

    def run(self, command: str) -> str:
        """COMMAND's output on the host (read-only, one at a time over the SSH connection), or Failed."""
        with self._shell_lock:
            ok, output = self.shell(command)
        if not ok:
            raise Failed(f"on the host, {command.split()[0]} failed: {one_line(output) or 'no output'}")
        return output

    @cached_property
    def tls_ports(self) -> tuple[TlsPort, ...]:
        """Every port that serves TLS under the one policy (25, 465, 587, ...)."""
        return tuple(tls_port for component in for_platform(self.platform)
                     for tls_port in component.tls_ports(self.settings))

    @cached_property
    def submission_ports(self) -> tuple[TlsPort, ...]:
        """The TLS ports that take submissions (587, and 465 when it is on)."""
        ports = {self.settings.submission_port, self.settings.submissions_port}
        return tuple(tls_port for tls_port in self.tls_ports if tls_port.port in ports)

    def handshakes(self) -> dict[int, tuple[str, bytes] | Exception]:
        """Each TLS port's session as a client with no special wishes makes it, side by side and
        once for all the checks: port -> (TLS version, certificate DER), or what ended it."""
        with self._handshake_lock:
            if self._handshakes is None:
                def hello(tls_port: TlsPort) -> tuple[str, bytes] | Exception:
                    try:
                        with self.tls_session(tls_port, tls_context()) as client:
                            return client.sock.version(), client.sock.getpeercert(binary_form=True)
                    except SESSION_ERRORS as error:
                        return error

                ports = list(self.tls_ports)
                with ThreadPoolExecutor(max_workers=max(1, len(ports))) as pool:
                    self._handshakes = dict(zip([p.port for p in ports], pool.map(hello, ports), strict=True))
            return self._handshakes

    @cached_property
    def certificate(self) -> bytes:
        """The certificate the submission port offers after STARTTLS (DER)."""
        found = self.handshakes().get(self.settings.submission_port)
        if isinstance(found, tuple):
            return found[1]
        with self.submission(tls_context()) as client:  # (its session ended: this one says why)
            return client.sock.getpeercert(binary_form=True)

    @cached_property
    def dns(self) -> Dns:
        """The resolver the DNS checks ask: dns_server, else this laptop's."""
        if self.settings.dns_server:
            return Dns(*self.settings.dns_server)
        return Dns(resolv_conf_server())

    @cached_property
    def host_state(self) -> dict:
        """The host's HostState (qmailhost/facts.py), read over SSH now: every component's probes."""
        script = "\n".join(probe.script(self.platform, self.settings)
                           for component in for_platform(self.platform) for probe in component.probes)
        return HostState().process(self.run(script + "\ntrue").splitlines())

    @contextlib.contextmanager
    def smtp(self, port: int):
        client = smtplib.SMTP(self.address, port, local_hostname=LAPTOP, timeout=TIMEOUT)
        try:
            yield client
        finally:
            _close(client)

    @contextlib.contextmanager
    def tls_session(self, tls_port: TlsPort, context: ssl.SSLContext):
        """A session on TLS_PORT once TLS is up (STARTTLS, or from the first byte), as a mail
        client or peer server makes it: for SMTP, with the EHLO after it read; for IMAP and
        POP3, the standard library's client (its .sock is the TLS socket)."""
        if tls_port.protocol != "smtp":
            with self._mailbox_session(tls_port, context) as client:
                yield client
            return
        if tls_port.starttls:
            with self.smtp(tls_port.port) as client:
                client.ehlo()
                client.starttls(context=context)
                client.ehlo()
                yield client
            return
        client = smtplib.SMTP_SSL(self.address, tls_port.port, local_hostname=LAPTOP, timeout=TIMEOUT,
                                  context=context)
        try:
            client.ehlo()
            yield client
        finally:
            _close(client)

    @contextlib.contextmanager
    def _mailbox_session(self, tls_port: TlsPort, context: ssl.SSLContext):
        """imaplib or poplib on TLS_PORT, TLS up (STARTTLS read from the capabilities first)."""
        imap = tls_port.protocol == "imap"
        if tls_port.starttls:
            client = (imaplib.IMAP4 if imap else poplib.POP3)(self.address, tls_port.port, timeout=TIMEOUT)
            try:
                client.starttls(ssl_context=context) if imap else client.stls(context=context)
            except BaseException:
                client.shutdown() if imap else client.close()
                raise
        elif imap:
            client = imaplib.IMAP4_SSL(self.address, tls_port.port, ssl_context=context, timeout=TIMEOUT)
        else:
            client = poplib.POP3_SSL(self.address, tls_port.port, context=context, timeout=TIMEOUT)
        try:
            yield client
        finally:
            with contextlib.suppress(*SESSION_ERRORS):
                client.logout() if imap else client.quit()

    def submission(self, context: ssl.SSLContext, tls_port: TlsPort | None = None):
        """A session on a submission port (default: the STARTTLS one) after TLS and a second EHLO."""
        return self.tls_session(tls_port or TlsPort(self.settings.submission_port, "submission", True), context)


def _close(client: smtplib.SMTP) -> None:
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.quit()
    client.close()


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


# --- the checks over every component's services ------------------------------------------------


def check_services_up(target: Target):
    """Every service (and its log) runs, and is not restarting over and over (through the
    platform's service backend: svstat, or rc.d's onestatus)."""
    from qmailhost.backends import services

    backend, platform, listeners = services.backend(target.platform), target.platform, list(target.listeners)

    def status() -> dict[str, dict]:
        return backend.parse_status(platform, listeners, target.run(backend.status_script(platform, listeners)))

    deadline = time.monotonic() + SUPERVISION_WAIT
    first = status()
    while any(s["starting"] for s in first.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        first = status()
    problems = [f"{name} {s['words']}" for name, s in first.items() if not s["up"]]
    if problems:
        return ERROR, "; ".join(problems)
    # A young service may be one a deploy has just repaired, after restarts (a crash loop the
    # deploy ended): it is judged once it has had SETTLE seconds to stay up; only one that still
    # restarts then is restarting over and over.
    young = {name for name, s in first.items() if s["seconds"] is not None and s["seconds"] < STEADY}
    settle_by = time.monotonic() + SETTLE
    while young:
        time.sleep(STEADY)
        again = status()
        young = {name for name in young if again[name]["pid"] != first[name]["pid"] or not again[name]["up"]
                 or (again[name]["seconds"] is not None and again[name]["seconds"] < STEADY)}
        if young and time.monotonic() >= settle_by:
            return ERROR, f"restarting over and over: {', '.join(sorted(young))}"
        first = {**first, **{name: again[name] for name in young}}
    running = ", ".join(f"{listener.name} " + (age(first[listener.name]["seconds"])
                                                if first[listener.name]["seconds"] is not None
                                                else f"pid {first[listener.name]['pid']}")
                        for listener in listeners)
    return OK, f"all up: {running}"


def check_public_ports_answer(target: Target):
    """Every public service answers with its protocol's greeting (SMTP: to EHLO; IMAP: "* OK",
    which imaplib reads, after TLS when TLS comes first)."""
    answers = []
    for listener in target.listeners:
        if not (listener.public and listener.port):
            continue
        if listener.protocol == "smtp":
            with target.smtp(listener.port) as client:
                code, _ = client.ehlo()
            if code != 250:
                return ERROR, f"port {listener.port} ({listener.role}) answered EHLO with {code}"
        else:
            port = TlsPort(listener.port, listener.role, starttls=not listener.implicit_tls, protocol=listener.protocol)
            with target.tls_session(port, tls_context()):
                pass  # the client has read the greeting (and, for STARTTLS, the capabilities)
        answers.append(str(listener.port))
    return OK, f"ports {', '.join(answers)} answer"


def check_loopback_ports_closed(target: Target):
    """Loopback-only services cannot be reached from outside."""
    closed = []
    for listener in target.listeners:
        if listener.port and not listener.public:
            try:
                socket.create_connection((target.address, listener.port), timeout=5).close()
            except OSError:
                closed.append(str(listener.port))
                continue
            return ERROR, f"port {listener.port} ({listener.role}) accepts connections from outside"
    return OK, f"port {', '.join(closed)} not reachable from outside"


COMPONENT = Component(
    name="checks",
    settings=(
        Setting("verify_after_deploy", True, boolean("verify_after_deploy"),
                "run the status checks at the end of every deploy"),
        Setting("verify_account", None, _verify_account,
                "`{\"name\": \"alice\"}`: the AUTH checks log in as that account (else skipped)"),
        *sources.UPSTREAM_SETTINGS,  # (declared beside its check, with the pins it reads)
    ),
    checks=(check_services_up, check_public_ports_answer, check_loopback_ports_closed,
            sources.check_upstream_releases),
)


def all_checks(platform: Platform) -> tuple[Callable, ...]:
    """Every check, in the table's order: the framework's, then each component's."""
    return tuple(check for component in for_platform(platform) for check in component.checks)


def check_name(check: Callable) -> str:
    return check.__name__.removeprefix("check_")


# --- helpers the checks share -------------------------------------------------------------


def one_line(text, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def reply_text(reply: bytes) -> str:
    return one_line(reply.decode(errors="replace"), 80)


def age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds // 86400} days"


# --- running them ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    name: str
    status: str
    reason: str


def _run_one(check: Callable, target: Target) -> Result:
    try:
        status, reason = check(target)
    except Failed as failure:
        status, reason = ERROR, one_line(failure)
    except (OSError, smtplib.SMTPException, DnsError) as error:
        status, reason = ERROR, one_line(f"{type(error).__name__}: {error}")
    return Result(check_name(check), status, reason)


def run_checks(target: Target, checks=None) -> list[Result]:
    """CHECKS (default: all of them): the services check first, alone (the others need the
    services up), then the rest side by side; the results in the order of CHECKS."""
    checks = list(checks if checks is not None else all_checks(target.platform))
    first = [_run_one(checks.pop(0), target)] if checks and checks[0] is check_services_up else []
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        rest = list(pool.map(lambda check: _run_one(check, target), checks))
    return first + rest


def summary_table(title: str, results: list[Result]) -> list[str]:
    width = max(len(r.name) for r in results)
    lines = [f"--> {title}", f"{'check':{width}}  {'status':8} reason"]
    lines += [f"{r.name:{width}}  {r.status:8} {r.reason}" for r in results]
    counts = {s: sum(r.status == s for r in results) for s in (OK, WARNING, ERROR, SKIPPED)}
    lines.append(f"{len(results)} checks: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return lines


def _callback(settings: Settings, platform: Platform, also: Callable | None = None):
    """The python.call function: runs the checks at execution time; False fails the operation.
    ALSO(state, host), when given, prints more after the table (whatever the checks said)."""

    def check_mail_host(state, host) -> bool:
        arguments = connector_arguments(state, host)

        def shell(command: str) -> tuple[bool, str]:
            ok, output = host.run_shell_command(command, print_output=False, **arguments)
            return ok, output.stdout if ok else output.output

        address = host.data.get("ssh_hostname") or host.name
        target = Target(settings, platform, address, shell, inventory=(host.data.dict(), host.name))
        results = run_checks(target)
        for line in summary_table(f"Status checks of {settings.hostname} (at {address})", results):
            logger.info(line)
        if also is not None:
            also(state, host)
        errors = [r.name for r in results if r.status == ERROR]
        if errors:
            host.log_styled(f"status checks failed: {', '.join(errors)}", fg="red", log_func=logger.error)
        return not errors

    return check_mail_host


def connector_arguments(state, host) -> dict:
    """The connector arguments (sudo, su, ...) operations get, for the SSH commands."""
    arguments, _ = pop_global_arguments(state, host, {})
    return {key: arguments[key] for key in CONNECTOR_ARGUMENT_KEYS if key in arguments}


def verify(settings: Settings, platform: Platform, also: Callable | None = None) -> None:
    """Add the checks: one operation, run after every operation added before it (ALSO: see _callback)."""
    python.call(name=OPERATION_NAME, function=_callback(settings, platform, also))


def after_deploy(settings: Settings, platform: Platform) -> None:
    """deploy.py's last step: the checks, unless verify_after_deploy is off.

    Not an operation: an operation that always runs would make every deploy report a
    change and every dry run predict one. The checks run when the deploy's last
    operation has ended (never in a dry run); an error fails the host, so pyinfra
    exits non-zero."""
    if settings.verify_after_deploy:
        _AfterDeploy.register(host._get_module(), _callback(settings, platform))


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
