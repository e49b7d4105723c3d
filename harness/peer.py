"""A real peer MTA that nobody here wrote: Debian's Postfix in a second throwaway host.

For end-to-end tests of SMTP with STARTTLS on port 25 between the qmailhost host (qmail behind
spamdyke on 25, qmail-remote outbound) and a mail system of another make.

Pieces
------
- ``Relay(listen_address, listen_port, target_address, target_port)``: a byte-for-byte TCP
  forwarder in the root namespace, run as a child process (``python -m harness.peer relay``)
  whose PID is recorded in ``Relay.pid``. STARTTLS passes through untouched. ``stop()`` (or the
  context manager) ends it; it also ends by itself when the process that started it dies
  (its stdin is a pipe from the starter; EOF ends the relay and every connection it carries).
- ``PostfixPeer(host, domain="peer.test", hostname="mx.peer.test")``: Postfix from the Debian
  archive on a ``harness.sandbox`` host. ``install()`` (apt, a self-signed RSA certificate,
  ``postconf -e``, ``postfix start``), ``send()`` through the peer's own sendmail,
  ``wait_for_message()`` from ~bob/Maildir/new, ``log()`` (/var/log/postfix.log),
  ``set(**main_cf)`` (postconf -e + reload), ``require_tls_outbound()``, ``break_tls()`` /
  ``fix_tls()``, ``flush()`` (retry the queue now), ``wait_for_status()``.
- ``link(a_host, peer_host)``: the two relays that connect two sandbox hosts, which cannot
  reach each other (no routing between namespaces; ip_forward stays off).
- ``starttls_probe(address, port)``: what a client sees: is STARTTLS offered in the EHLO
  reply, and does ``openssl s_client -starttls smtp`` complete a handshake.

Routing for the end-to-end tests
--------------------------------
Every sandbox host reaches only its own gateway (the host side of its veth, 10.213.N.1), so
each direction of mail goes through a relay on the *sender's* gateway::

    A (qmail-remote) --> A.gateway:25 ==relay==> peer.address:25 (Postfix smtpd)
    peer (Postfix smtp, relayhost=[peer.gateway]:25) --> peer.gateway:25 ==relay==> A.address:25

``link(A, peer)`` starts both relays (``Link.close()`` or ``with`` stops them). qmail-remote on
A finds the peer by MX: the e2e test serves DNS for peer.test itself (MX ``mx.peer.test``, whose
A record is A.gateway). Postfix on the peer needs no DNS: ``install()`` sets
``relayhost = [peer.gateway]:25`` (brackets: no MX lookup), so everything not local to the peer
leaves through its gateway. Two peers can be linked the same way (peer.test <-> other.test).

What the receiving side sees as the client address is always the *receiver's* gateway (the
relay connects from there): the peer logs its clients as ``unknown[peer.gateway]``, which is in
its mynetworks, so the laptop and A may also use it as a sender.

How the peer's TLS is broken
----------------------------
``break_tls()`` keeps STARTTLS in the EHLO reply and makes every handshake fail, for every
client: smtpd's protocols are limited to TLS 1.2 and below (TLS 1.3 suites cannot be cut by a
cipher list), and every cipher that authenticates with RSA or not at all is excluded
(``smtpd_tls_exclude_ciphers = aRSA, aNULL``), while the only certificate is RSA. What is left
(ECDSA, DSS, PSK, SRP suites) needs a key the server does not have, so OpenSSL on the server
answers any ClientHello with a ``handshake_failure`` alert ("no shared cipher" in the peer's
log). ``fix_tls()`` restores the previous values.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import re
import select
import shlex
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from harness.sandbox import Host, SandboxError

PROJECT = Path(__file__).resolve().parent.parent
LOG_FILE = "/var/log/postfix.log"
CERT_FILE = "/etc/postfix/peer-tls.crt"
KEY_FILE = "/etc/postfix/peer-tls.key"
SAVED_TLS = "/etc/postfix/peer-tls-before-break"  # break_tls() keeps main.cf's old lines here
PACKAGES = ("postfix", "openssl")
# The smtpd settings break_tls() changes (and fix_tls() puts back).
_TLS_BREAKAGE = {
    "smtpd_tls_protocols": "!SSLv2, !SSLv3, !TLSv1.3",
    "smtpd_tls_mandatory_protocols": "!SSLv2, !SSLv3, !TLSv1.3",
    "smtpd_tls_exclude_ciphers": "aRSA, aNULL",
    "smtpd_tls_mandatory_exclude_ciphers": "aRSA, aNULL",
    "smtpd_tls_session_cache_timeout": "0",  # nothing to resume from before the breakage
}


# `postfix reload`, then wait (up to 10 s) until every smtpd that was running before it has exited.
_RELOAD = r"""
smtpds() { for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = smtpd ] && echo ${d#/proc/}; done; true; }
old=$(smtpds)
postfix reload >/dev/null 2>&1
for i in $(seq 100); do
  alive=; for p in $old; do [ -d /proc/$p ] && alive=1; done
  [ -z "$alive" ] && break; sleep 0.1
done
"""


class PeerError(RuntimeError):
    pass


# --- the relay -----------------------------------------------------------------------------


def listeners(port: int) -> list[str]:
    """Local addresses (root namespace) with a TCP socket listening on PORT, as ss prints them."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if len(line.split()) >= 4]


def listening_on(address: str, port: int) -> str | None:
    """The listener that would take ADDRESS:PORT (that address, or a wildcard), if any."""
    for local in listeners(port):
        host = local.rsplit(":", 1)[0].strip("[]").split("%")[0]
        if host in (address, "0.0.0.0", "*", "::"):
            return local
    return None


class Relay:
    """Forward (listen_address, listen_port) to (target_address, target_port), byte for byte."""

    def __init__(self, listen_address: str, listen_port: int, target_address: str, target_port: int):
        self.listen = (listen_address, int(listen_port))
        self.target = (target_address, int(target_port))
        self.pid: int | None = None
        self._process: subprocess.Popen | None = None
        self._log_path: Path | None = None
        self._last_log = ""  # what the log said when the relay stopped

    def __repr__(self) -> str:
        return f"Relay({self.listen[0]}:{self.listen[1]} -> {self.target[0]}:{self.target[1]}, pid={self.pid})"

    def start(self) -> Relay:
        if self.running:
            return self
        taken = listening_on(*self.listen)
        if taken:
            raise PeerError(f"{self.listen[0]}:{self.listen[1]} is taken: something already listens on {taken}")
        handle, name = tempfile.mkstemp(prefix=f"qmailhost-relay-{self.listen[0]}-{self.listen[1]}-", suffix=".log")
        self._log_path = Path(name)
        with open(handle, "wb") as log_file:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "harness.peer", "relay", self.listen[0], str(self.listen[1]),
                 self.target[0], str(self.target[1]), str(self._log_path)],
                cwd=PROJECT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                start_new_session=True,
            )
        self.pid = self._process.pid
        ready = ""
        if select.select([self._process.stdout], [], [], 15)[0]:
            ready = self._process.stdout.readline().decode().strip()  # "listening", or EOF if it failed
        if ready != "listening":
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait(timeout=5)
            error = self.log().strip().splitlines()[-1:] or ["(no output)"]
            self._cleanup()
            raise PeerError(f"relay {self.listen[0]}:{self.listen[1]} did not start: {error[0]}")
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """The relay's own log: one line per connection opened and closed (kept after stop())."""
        if self._log_path and self._log_path.exists():
            return self._log_path.read_text(errors="replace")
        return self._last_log

    def connections(self) -> int:
        return self.log().count(" open ")

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(OSError):
                process.stdin.write(b"stop\n")  # "stop" then EOF: the starter will read the log
                process.stdin.close()  # EOF: the relay exits by itself
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()  # the Popen object's own child, by its PID
                process.wait(timeout=5)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._process is not None:
            for stream in (self._process.stdin, self._process.stdout):
                with contextlib.suppress(OSError):
                    stream.close()
        self._process = None
        self._last_log = self.log()
        if self._log_path:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _forward(listen: str, listen_port: int, target: str, target_port: int, log_path: str | None = None) -> None:
    """The relay process: accept on LISTEN:LISTEN_PORT, connect to TARGET:TARGET_PORT, copy bytes.
    Ends at EOF on stdin: after "stop" from the starter's stop(), or without it when the starter
    died, and then nobody will read LOG_PATH, so it goes too."""

    def note(text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    try:
        server = socket.create_server((listen, listen_port))
    except OSError as error:
        note(f"cannot listen on {listen}:{listen_port}: {error}")
        sys.exit(1)

    def watch_starter() -> None:  # the starter closed our stdin, or died: stop everything
        said = b""
        with contextlib.suppress(OSError):
            said = sys.stdin.buffer.read()
        note("stdin closed: exiting")
        if log_path and b"stop" not in said:  # the starter died: nobody will read or remove the log
            with contextlib.suppress(OSError):
                os.unlink(log_path)
        os._exit(0)

    def pipe(src: socket.socket, dst: socket.socket, counts: list[int], index: int) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
                counts[index] += len(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve(client: socket.socket, peer: tuple) -> None:
        name = f"{peer[0]}:{peer[1]}"
        try:
            upstream = socket.create_connection((target, target_port), timeout=10)
        except OSError as error:
            note(f"refused {name}: cannot reach {target}:{target_port}: {error}")
            client.close()
            return
        upstream.settimeout(None)
        note(f"open {name} -> {target}:{target_port}")
        counts = [0, 0]
        threads = [threading.Thread(target=pipe, args=(a, b, counts, i), daemon=True)
                   for i, (a, b) in enumerate(((client, upstream), (upstream, client)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        client.close()
        upstream.close()
        note(f"close {name}: {counts[0]} bytes up, {counts[1]} bytes down")

    threading.Thread(target=watch_starter, daemon=True).start()
    print("listening", flush=True)
    note(f"listening on {listen}:{listen_port}, forwarding to {target}:{target_port}")
    while True:
        client, peer = server.accept()
        threading.Thread(target=serve, args=(client, peer), daemon=True).start()


@dataclass
class Link:
    """The relays between two sandbox hosts (see the module's docstring)."""

    relays: list[Relay]

    def close(self) -> None:
        for relay in self.relays:
            relay.stop()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def link(a_host: Host, peer_host: Host, port: int = 25) -> Link:
    """A.gateway:PORT -> peer.address:PORT (A's outbound to the peer) and
    peer.gateway:PORT -> A.address:PORT (the peer's outbound, relayhost=[peer.gateway], to A)."""
    wanted = [(a_host.gateway, peer_host.address), (peer_host.gateway, a_host.address)]
    for listen, _ in wanted:
        taken = listening_on(listen, port)
        if taken:
            raise PeerError(f"cannot link: something already listens on {taken} (wanted {listen}:{port})")
    started: list[Relay] = []
    try:
        for listen, target in wanted:
            started.append(Relay(listen, port, target, port).start())
    except BaseException:
        for relay in started:
            relay.stop()
        raise
    return Link(started)


# --- what a client sees ----------------------------------------------------------------------


@dataclass
class Probe:
    starttls_offered: bool
    handshake_ok: bool
    protocol: str | None
    cipher: str | None
    output: str  # s_client's own words


def starttls_probe(address: str, port: int = 25, timeout: float = 30) -> Probe:
    """EHLO (does the reply offer STARTTLS?), then `openssl s_client -starttls smtp` (does the
    handshake complete?), from the laptop to ADDRESS:PORT (a peer, or a relay to one)."""
    with smtplib.SMTP(address, port, local_hostname="laptop.test", timeout=timeout) as client:
        client.ehlo()
        offered = client.has_extn("starttls")
    result = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-name", "laptop.test", "-connect", f"{address}:{port}",
         "-brief"],
        input="", capture_output=True, text=True, timeout=timeout,
    )
    output = result.stdout + result.stderr
    protocol = re.search(r"^Protocol version: (\S+)", output, re.M)
    cipher = re.search(r"^Ciphersuite: (\S+)", output, re.M)
    ok = result.returncode == 0 and "CONNECTION ESTABLISHED" in output
    return Probe(offered, ok, protocol and protocol.group(1), cipher and cipher.group(1), output)


# --- the Postfix peer ------------------------------------------------------------------------


class PostfixPeer:
    """Debian's Postfix on a sandbox host: domain DOMAIN, local user bob, Maildir delivery."""

    def __init__(self, host: Host, domain: str = "peer.test", hostname: str | None = None, user: str = "bob"):
        self.host = host
        self.domain = domain
        self.hostname = hostname or f"mx.{domain}"
        self.user = user
        self.install_seconds: float | None = None
        self.apt_seconds: float | None = None

    def __repr__(self) -> str:
        return f"PostfixPeer({self.host.name} {self.host.address}, {self.domain})"

    @property
    def address(self) -> str:
        return f"{self.user}@{self.domain}"

    def ssh(self, command: str, check: bool = True, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        try:
            return self.host.ssh(command, check=check, timeout=timeout, **kwargs)
        except SandboxError as error:
            raise PeerError(str(error)) from None

    # installing and running

    def install(self, relayhost: str | None = None, **main_cf: str) -> float:
        """Install and start Postfix; returns the seconds it took (apt's part in apt_seconds).
        RELAYHOST defaults to [host.gateway]:25 (see the module docstring); "" sends by MX."""
        started = time.monotonic()
        preseed = (f"postfix postfix/main_mailer_type select Internet Site\n"
                   f"postfix postfix/mailname string {self.hostname}\n")
        self.ssh(
            "set -e; export DEBIAN_FRONTEND=noninteractive; debconf-set-selections; "
            f"echo {shlex.quote(self.hostname)} > /etc/mailname; "
            "apt-get update -q >/dev/null; "
            f"apt-get install -y -q --no-install-recommends {' '.join(PACKAGES)} >/tmp/apt-postfix.log 2>&1 "
            "|| { tail -20 /tmp/apt-postfix.log >&2; exit 1; }",
            input=preseed, timeout=900,
        )
        self.apt_seconds = time.monotonic() - started
        gateway = self.host.gateway
        settings = {
            "myhostname": self.hostname,
            "mydomain": self.domain,
            "myorigin": "$mydomain",
            "mydestination": "$myhostname, $mydomain, localhost",
            "home_mailbox": "Maildir/",
            "mailbox_command": "",
            "inet_interfaces": "all",
            "inet_protocols": "ipv4",
            "mynetworks": f"127.0.0.0/8 {gateway}/32",
            "relayhost": f"[{gateway}]:25" if relayhost is None else relayhost,
            "smtpd_banner": "$myhostname ESMTP $mail_name (Debian)",
            "smtpd_tls_cert_file": CERT_FILE,
            "smtpd_tls_key_file": KEY_FILE,
            "smtpd_tls_security_level": "may",
            "smtpd_tls_received_header": "yes",
            "smtpd_tls_loglevel": "1",
            "smtp_tls_security_level": "may",
            "smtp_tls_loglevel": "1",
            "maillog_file": LOG_FILE,
            # Deferred mail is retried within seconds, not minutes (tests wait on it).
            "queue_run_delay": "10s",
            "minimal_backoff_time": "10s",
            "maximal_backoff_time": "60s",
            **main_cf,
        }
        user = shlex.quote(self.user)
        self.ssh(
            "set -e; "
            f"id -u {user} >/dev/null 2>&1 || useradd -m -s /bin/sh {user}; "
            f"openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN={shlex.quote(self.hostname)} "
            f"-addext subjectAltName=DNS:{shlex.quote(self.hostname)} -keyout {KEY_FILE} -out {CERT_FILE} "
            "2>/dev/null; "
            f"chmod 600 {KEY_FILE}; "
            # No chroot: the sandbox has no init script to copy resolv.conf and friends into it.
            "postconf -F '*/*/chroot = n'; "
            f"postconf -e {' '.join(shlex.quote(f'{k} = {v}') for k, v in settings.items())}; "
            # No reverse lookups of clients (no DNS here; /etc/hosts names the gateway deb.debian.org).
            "postconf -d smtpd_peername_lookup >/dev/null 2>&1 && postconf -e smtpd_peername_lookup=no; "
            "newaliases; postfix check",
        )
        self.start()
        self.install_seconds = time.monotonic() - started
        return self.install_seconds

    def start(self) -> None:
        """`postfix start` (no systemd in the sandbox), then wait for smtpd to answer on 25."""
        self.ssh("postfix status >/dev/null 2>&1 || postfix start </dev/null >/dev/null 2>&1; postfix status")
        self._wait_for_port()

    def stop(self) -> None:
        self.ssh("postfix stop", check=False)

    def running(self) -> bool:
        return self.ssh("postfix status", check=False).returncode == 0

    def _wait_for_port(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host.address, 25), timeout=2) as conn:
                    conn.settimeout(5)
                    if conn.recv(4).startswith(b"220"):
                        with contextlib.suppress(OSError):
                            conn.sendall(b"QUIT\r\n")
                            conn.recv(1024)
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PeerError(f"{self}: smtpd does not answer on {self.host.address}:25\n{self.log()[-1500:]}")
            time.sleep(0.2)

    # configuration

    def get(self, name: str) -> str:
        return self.ssh(f"postconf -h {shlex.quote(name)}").stdout.rstrip("\n")

    def set(self, **main_cf: str) -> None:
        """postconf -e every NAME = VALUE, then `postfix reload` (new smtpd/smtp processes use it)."""
        if main_cf:
            pairs = " ".join(shlex.quote(f"{k} = {v}") for k, v in main_cf.items())
            self.reload(f"postconf -e {pairs}")

    def reload(self, before: str = "true") -> None:
        """Run BEFORE, `postfix reload`, and wait until the old smtpd processes are gone (a client
        connecting right after a reload must meet the new settings)."""
        self.ssh(f"set -e; {before}; {_RELOAD}")
        self._wait_for_port()

    def require_tls_outbound(self) -> None:
        self.set(smtp_tls_security_level="encrypt")

    def allow_plaintext_outbound(self) -> None:
        self.set(smtp_tls_security_level="may")

    def break_tls(self) -> None:
        """STARTTLS still offered, every handshake fails (see the module docstring). What main.cf
        said before is kept on the host (SAVED_TLS), so fix_tls() works from any PostfixPeer."""
        names = " ".join(_TLS_BREAKAGE)
        self.ssh(f"[ -e {SAVED_TLS} ] || {{ echo '# main.cf before break_tls()'; postconf -n {names}; }} > {SAVED_TLS}")
        self.set(**_TLS_BREAKAGE)

    def fix_tls(self) -> None:
        """Undo break_tls(): the settings it changed get back what main.cf said before it."""
        saved = self.ssh(f"cat {SAVED_TLS} 2>/dev/null; true").stdout
        if not saved:
            return  # not broken
        before = dict(line.split(" = ", 1) if " = " in line else (line.rstrip(" ="), "")
                      for line in saved.splitlines() if line.strip() and not line.startswith("#"))
        restore = " ".join(shlex.quote(f"{k} = {before[k]}") for k in _TLS_BREAKAGE if k in before)
        remove = " ".join(k for k in _TLS_BREAKAGE if k not in before)
        self.reload(f"{f'postconf -e {restore}; ' if restore else ''}"
                    f"{f'postconf -X {remove}; ' if remove else ''}rm -f {SAVED_TLS}")

    def tls_broken(self) -> bool:
        return self.ssh(f"test -e {SAVED_TLS}", check=False).returncode == 0

    # mail

    def send(self, sender: str, recipient: str, subject: str, body: str = "A test message.\n") -> str:
        """Queue a message with the peer's own sendmail (Postfix's smtp client then sends it on);
        returns its Message-ID."""
        message_id = f"<{uuid.uuid4().hex}@{self.hostname}>"
        text = (f"From: {sender}\nTo: {recipient}\nSubject: {subject}\n"
                f"Date: {email.utils.formatdate(localtime=False)}\nMessage-ID: {message_id}\n\n{body}")
        if not text.endswith("\n"):
            text += "\n"
        self.ssh(f"/usr/sbin/sendmail -i -f {shlex.quote(sender)} -- {shlex.quote(recipient)}", input=text)
        return message_id

    def flush(self) -> None:
        """Retry every deferred message now (postqueue -f)."""
        self.ssh("postqueue -f")

    def queue(self) -> str:
        return self.ssh("postqueue -p").stdout

    def find_message(self, subject: str) -> str | None:
        home = self.ssh(f"getent passwd {shlex.quote(self.user)} | cut -d: -f6").stdout.strip()
        found = self.ssh(
            f"grep -l -F -e {shlex.quote(f'Subject: {subject}')} {shlex.quote(home)}/Maildir/new/* 2>/dev/null; true"
        ).stdout.split()
        return self.ssh(f"cat {shlex.quote(found[0])}").stdout if found else None

    def wait_for_message(self, subject: str, timeout: float = 60) -> str:
        """The raw message with SUBJECT in bob's Maildir/new (waiting up to TIMEOUT seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.find_message(subject)
            if message is not None:
                return message
            if time.monotonic() > deadline:
                raise PeerError(f"{self}: no message {subject!r} in {self.user}'s Maildir within {timeout} s;"
                                f" queue:\n{self.queue()}\nlog tail:\n{self.log()[-2000:]}")
            time.sleep(0.3)

    def log(self) -> str:
        return self.ssh(f"cat {LOG_FILE} 2>/dev/null; true").stdout

    def queue_id(self, message_id: str, timeout: float = 30) -> str:
        """The queue ID cleanup gave the message with MESSAGE_ID."""
        pattern = re.compile(rf"\]: ([0-9A-Za-z]+): message-id={re.escape(message_id)}")
        return self._wait_in_log(pattern, timeout, f"message-id {message_id}").group(1)

    def wait_for_status(self, message_id: str, status: str | None = None, timeout: float = 60,
                        after: int = 0) -> str:
        """The first delivery log line (`status=sent|deferred|bounced ...`) for MESSAGE_ID (of STATUS
        if given) after the first AFTER such lines."""
        queue_id = self.queue_id(message_id, timeout)
        kind = re.escape(status) if status else r"\w+"
        pattern = re.compile(rf"^.*\]: {queue_id}: to=<[^>]*>.* status={kind} .*$", re.M)
        return self._wait_in_log(pattern, timeout, f"{queue_id} status={status or '*'}", after).group(0)

    def _wait_in_log(self, pattern: re.Pattern, timeout: float, what: str, skip: int = 0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            matches = list(pattern.finditer(self.log()))
            if len(matches) > skip:
                return matches[skip]
            if time.monotonic() > deadline:
                raise PeerError(f"{self}: no {what} in {LOG_FILE} within {timeout} s:\n{self.log()[-2000:]}")
            time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) in (5, 6) and args[0] == "relay":
        _forward(args[1], int(args[2]), args[3], int(args[4]), *args[5:])
        return 0
    print("usage: python -m harness.peer relay LISTEN_ADDRESS LISTEN_PORT TARGET_ADDRESS TARGET_PORT [LOG]",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
