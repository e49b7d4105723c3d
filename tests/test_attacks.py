"""What a stranger can do, tried from outside against a deployed host (issue 24).

Each attack is made the way an attacker makes it: smtplib and imaplib as a mail client
logs in, raw TLS sockets from the laptop's side of the veth for what no client sends.

- H3: root and a system user, each with a password set by hand, try SMTP AUTH on 587
  and 465 and IMAP on 993: every try is refused, while the mail account still logs in.
- H4: an endless line after STARTTLS on 587 ends that session (ofmipd's data segment is
  bounded), not the host: every other daemon keeps its PID and mail still flows.
- M2: RCPT to an unknown local user on port 25 is refused there (no backscatter later),
  while aliases, extension addresses, virtualdomains and a catch-all keep working.
- H1: a 10 MB message on port 25 (a 7 MB attachment) is delivered, not 451 forever.
- M1: Authentication-Results forged in the host's name, however spelt, never reach the
  Maildir, and an envelope sender cannot add results to the host's own header.
- H3 (the brake): failed logins are counted per session, per address and per account across
  587, 465 and 993; past the limit a right password is refused too, except from an address
  the account is known at.
- M3: a logged-in account sends only as itself (its address, extensions, aliases, its virtual
  domain, what extra_senders allows), in the envelope and in From:, within the size and
  recipient caps.
- M6: one address cannot hold more than its share of connections, and a session that
  dribbles commands ends after session_seconds, on 25 and on submission.
(The inbound filter's CPU bounds, H2, are shown in tests/test_attacks_inbound.py.)
"""

from __future__ import annotations

import base64
import imaplib
import os
import re
import secrets
import smtplib
import socket
import ssl
import time

import pytest

from harness import images, sandbox
from harness.mail import message, submit, tls_context, wait_for_delivery
from harness.pyinfra_cli import pyinfra

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN
SYSTEM_USER = "backupd"  # a system account (useradd -r: uid below 1000) that is no mail account
ENDLESS_LIMIT = 256 * 1024 * 1024  # the most the endless-line attack sends
CHUNK = 1024 * 1024
VIRTUAL = "lists.sandbox.test"  # a virtual domain delivered to alice-<local part>
EXTRA_SENDER = "alice@elsewhere.example"  # extra_senders allows alice this foreign address
SESSION_SECONDS = 40  # the module's host's whole-session limit: room for four failed logins (the
# AUTH patch answers each after sleep(5))
PER_ADDRESS = 10  # connections one address may hold on each SMTP port (connections_per_address)
MAX_RECIPIENTS = 5  # what one submission may address (submission_max_recipients)


@pytest.fixture(scope="module")
def target(sandbox_ready, sources):
    host = images.create(f"t{os.getpid()}-attacks")
    try:
        pyinfra(host, data={"virtualdomains": {VIRTUAL: USER}, "extra_senders": {USER: [EXTRA_SENDER]},
                            "session_seconds": SESSION_SECONDS, "connections_per_address": PER_ADDRESS,
                            "submission_max_recipients": MAX_RECIPIENTS})
        others = {"root": secrets.token_urlsafe(12), SYSTEM_USER: secrets.token_urlsafe(12)}
        host.ssh(f"useradd -r -M -s /usr/sbin/nologin {SYSTEM_USER} && "
                 f"printf '%s\\n' 'root:{others['root']}' '{SYSTEM_USER}:{others[SYSTEM_USER]}' | chpasswd")
        yield host, others
    finally:
        sandbox.destroy(host.name)


def password() -> str:
    return sandbox.sandbox_password()


def _smtp_login(host, user: str, secret: str, port: int) -> None:
    """Log in as a mail client does (smtplib.login() with what the EHLO offers); raises if refused."""
    if port == 465:
        client = smtplib.SMTP_SSL(host.address, port, timeout=30, context=tls_context())
    else:
        client = smtplib.SMTP(host.address, port, timeout=30)
    with client:
        client.ehlo("laptop.test")
        if port != 465:
            client.starttls(context=tls_context())
            client.ehlo("laptop.test")
        client.login(user, secret)


def _imap_login(host, user: str, secret: str) -> None:
    with imaplib.IMAP4_SSL(host.address, 993, ssl_context=tls_context(), timeout=30) as client:
        client.login(user, secret)


@pytest.mark.parametrize("port", [587, 465])
def test_only_mail_accounts_log_in_to_smtp(target, port):
    host, others = target
    _smtp_login(host, USER, password(), port)  # the mail account: still logs in
    for user, secret in others.items():
        with pytest.raises(smtplib.SMTPAuthenticationError):
            _smtp_login(host, user, secret, port)


def test_only_mail_accounts_log_in_to_imap(target):
    host, others = target
    _imap_login(host, USER, password())
    for user, secret in others.items():
        with pytest.raises(imaplib.IMAP4.error):
            _imap_login(host, user, secret)


def test_an_endless_line_after_starttls_ends_the_session_not_the_host(target):
    host, _ = target
    before = host.service_pids()  # tcpserver's, for qmail-ofmipd: the session is its child
    raw = socket.create_connection((host.address, 587), timeout=30)
    reader = raw.makefile("rb")
    assert reader.readline().startswith(b"220")
    raw.sendall(b"EHLO laptop.test\r\n")
    while not reader.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\n")
    assert reader.readline().startswith(b"220")
    sock = tls_context().wrap_socket(raw, server_hostname=host.address)
    sent, started = 0, time.monotonic()
    try:
        while sent < ENDLESS_LIMIT and time.monotonic() - started < 120:
            sock.sendall(b"A" * CHUNK)  # one command line, never ended
            sent += CHUNK
    except (OSError, ssl.SSLError):
        pass
    finally:
        sock.close()
    print(f"\nendless line: {sent / CHUNK:.0f} MiB sent before the session ended "
          f"({time.monotonic() - started:.1f} s)")
    assert sent < ENDLESS_LIMIT // 2, f"the session read {sent / CHUNK:.0f} MiB of one line and went on"
    assert host.service_pids() == before, "a daemon other than the attacked session was restarted or killed"
    subject = f"after the endless line {secrets.token_hex(4)}"
    submit(host, USER, password(), message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}", subject))
    wait_for_delivery(host, USER, subject)


def _rcpt(host, recipient: str) -> int:
    """The code port 25 answers RCPT TO:<RECIPIENT> with, for a stranger's mail."""
    with smtplib.SMTP(host.address, 25, timeout=60) as client:
        client.ehlo("peer.example.net")
        client.mail("someone@peer.example.net")
        code, _ = client.rcpt(recipient)
    return code


def test_unknown_local_recipients_are_refused_at_rcpt(target):
    host, _ = target
    host.ssh(f"for ext in lists news; do install -o {USER} -g {USER} -m 600 /dev/null /home/{USER}/.qmail-$ext && "
             f"echo ./Maildir/ > /home/{USER}/.qmail-$ext; done")
    accepted = [f"{USER}@{DOMAIN}", f"postmaster@{DOMAIN}", f"{USER}-lists@{DOMAIN}", f"news@{VIRTUAL}"]
    refused = [f"nosuch@{DOMAIN}", f"{USER}-nolist@{DOMAIN}", f"other@{VIRTUAL}"]
    answers = {recipient: _rcpt(host, recipient) for recipient in accepted + refused}
    assert {r: answers[r] for r in accepted} == {r: 250 for r in accepted}, answers
    assert all(500 <= answers[r] < 600 for r in refused), answers
    # A catch-all (~alias/.qmail-default) takes every local name again.
    host.ssh("install -o alias -g nofiles -m 644 /dev/null /var/qmail/alias/.qmail-default && "
             f"echo '&{USER}' > /var/qmail/alias/.qmail-default")
    try:
        assert _rcpt(host, f"nosuch@{DOMAIN}") == 250
    finally:
        host.ssh("rm -f /var/qmail/alias/.qmail-default")


def _from_a_stranger(host, raw: bytes, sender: str = "someone@peer.example.net") -> None:
    """RAW from SENDER (written into MAIL FROM as given, as an attacker types it) on port 25."""
    with smtplib.SMTP(host.address, 25, timeout=120) as client:
        client.ehlo("peer.example.net")
        code, reply = client.docmd("MAIL", f"FROM:<{sender}>")
        assert code == 250, reply
        code, reply = client.rcpt(f"{USER}@{DOMAIN}")
        assert code == 250, reply
        code, reply = client.data(raw)
        assert code == 250, reply


def test_a_large_message_from_the_internet_is_delivered(target):
    host, _ = target
    subject = f"large {secrets.token_hex(4)}"
    attachment = base64.encodebytes(os.urandom(7_500_000))  # about 10 MB as sent
    raw = (f"From: someone@peer.example.net\r\nTo: {USER}@{DOMAIN}\r\nSubject: {subject}\r\n"
           "MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n").encode() + attachment.replace(b"\n", b"\r\n")
    assert len(raw) > 10_000_000
    _from_a_stranger(host, raw)  # raises on 451 (smtplib: SMTPDataError)
    delivered = wait_for_delivery(host, USER, subject, timeout=60)
    assert int(host.ssh(f"stat -c %s {delivered}").stdout) > 10_000_000


FORGED = ["{me}", "{me} 1", "(trust me) {me}", "{me}.", '"{me}"']


def test_forged_results_in_the_hosts_name_never_reach_the_maildir(target):
    host, _ = target
    me = "mail.sandbox.test"
    subject = f"forged {secrets.token_hex(4)}"
    forged = "".join(f"Authentication-Results: {spelling.format(me=me)}; dkim=pass header.d=bank.example\r\n"
                     for spelling in FORGED) + f"Authentication-Results : {me}; dkim=pass\r\n"
    raw = (forged + f"From: someone@peer.example.net\r\nTo: {USER}@{DOMAIN}\r\nSubject: {subject}\r\n\r\n"
           "hello\r\n").encode()
    _from_a_stranger(host, raw, sender="a@evil.example;dkim=pass(c)header.d=paypal.com")
    delivered = host.ssh(f"cat {wait_for_delivery(host, USER, subject)}").stdout
    head = delivered.split("\n\n", 1)[0]
    results = [field for field in re.split(r"\n(?![ \t])", head) if field.lower().startswith("authentication-results")]
    assert len(results) == 1 and results[0].startswith(f"Authentication-Results: {me};"), results
    assert "bank.example" not in head
    assert "header.d=paypal.com" not in results[0].replace('"a@evil.example;dkim=pass(c)header.d=paypal.com"', "")


# --- H3: the brake on password guessing ---------------------------------------------------------


class _ImapFrom(imaplib.IMAP4_SSL):
    """imaplib's IMAP4_SSL, connecting from SOURCE (an address on the laptop's side)."""

    def __init__(self, source: str, *args, **kwargs):
        self.source = source
        super().__init__(*args, **kwargs)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def _imap_login_from(host, source: str, user: str, secret: str) -> bool:
    """True when the login from SOURCE is accepted."""
    with _ImapFrom(source, host.address, 993, ssl_context=tls_context(), timeout=60) as client:
        try:
            client.login(user, secret)
        except imaplib.IMAP4.error:
            return False
        return True


def _auth_code(client: smtplib.SMTP, user: str, secret: str) -> int:
    """One AUTH PLAIN in an open session, as a client set to PLAIN sends it."""
    client.user, client.password = user, secret
    try:
        code, _ = client.auth("PLAIN", client.auth_plain, initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as error:
        code = error.smtp_code
    return code


def _submission(host, source: str | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP(host.address, 587, timeout=60, source_address=(source, 0) if source else None)
    client.ehlo("laptop.test")
    client.starttls(context=tls_context())
    client.ehlo("laptop.test")
    return client


def test_password_guessing_is_braked(target):
    from concurrent.futures import ThreadPoolExecutor

    host, _ = target
    stranger = host.client_address(1)  # a second address on the laptop's side: a stranger's
    assert _imap_login_from(host, host.gateway, USER, password())  # the laptop: an address alice is known at
    # Per session (587: behind stunnel every client is 127.0.0.1): three wrong, then the right one is refused.
    with _submission(host) as client:
        codes = [_auth_code(client, USER, f"guess-{n}") for n in range(3)]
        assert codes == [535, 535, 535], codes
        assert _auth_code(client, USER, password()) == 535, "a fourth try in the same session was checked"
    with _submission(host) as client:
        assert _auth_code(client, USER, password()) == 235  # a new session logs in
    # Per address and per account: ten wrong from the stranger's address, at once.
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda n: _imap_login_from(host, stranger, USER, f"guess-{n}"), range(10)))
    assert not any(results)
    assert not _imap_login_from(host, stranger, USER, password()), "the stranger's address was not held"
    with _submission(host) as client:
        assert _auth_code(client, USER, password()) == 535, "the account was not held on 587"
    with smtplib.SMTP_SSL(host.address, 465, timeout=60, context=tls_context()) as client:
        client.ehlo("laptop.test")
        assert _auth_code(client, USER, password()) == 535, "the account was not held on 465"
    # Its owner, from where the account is known, still logs in (and the account's count starts again).
    assert _imap_login_from(host, host.gateway, USER, password()), "the brake locked the owner out"
    with _submission(host) as client:
        assert _auth_code(client, USER, password()) == 235
    assert "login-brake: refused 'alice'" in host.ssh("cat /var/lib/qmailhost/login-brake/log").stdout


# --- M3: a logged-in account sends as itself ----------------------------------------------------


def _send_as(host, envelope: str, header_from: str, recipients: list[str] | None = None,
             body: bytes = b"hello\r\n") -> tuple[int, str]:
    """Alice, logged in on 587, sends with ENVELOPE and From: HEADER_FROM: the final reply."""
    subject = f"as {envelope} {secrets.token_hex(4)}"
    recipients = recipients or [f"{USER}@{DOMAIN}"]
    raw = (f"From: {header_from}\r\nTo: {recipients[0]}\r\nSubject: {subject}\r\n\r\n").encode() + body
    with _submission(host) as client:
        client.login(USER, password())
        try:
            client.sendmail(envelope, recipients, raw)
        except smtplib.SMTPDataError as error:
            return error.smtp_code, subject
        except smtplib.SMTPRecipientsRefused as error:
            return next(iter(error.recipients.values()))[0], subject
        except smtplib.SMTPSenderRefused as error:
            return error.smtp_code, subject
    return 250, subject


def test_a_logged_in_account_sends_only_as_itself(target):
    host, _ = target
    own = [f"{USER}@{DOMAIN}", f"{USER}-lists@{DOMAIN}", f"postmaster@{DOMAIN}", f"news@{VIRTUAL}", EXTRA_SENDER,
           f"{USER.upper()}@{DOMAIN.upper()}"]
    for address in own:
        code, subject = _send_as(host, address, f"Alice <{address}>")
        assert code == 250, f"{address}: {code}"
    wait_for_delivery(host, USER, subject)
    foreign = [("ceo@example.com", "ceo@example.com"), (f"bob@{DOMAIN}", f"bob@{DOMAIN}"),
               (f"{USER}@{DOMAIN}", "The CEO <ceo@example.com>"), (f"{USER}@{DOMAIN}", f"Bob <bob@{DOMAIN}>"),
               (f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}, ceo@example.com"),
               (f"{USER}@evil.example", f"{USER}@{DOMAIN}")]
    for envelope, header_from in foreign:
        code, subject = _send_as(host, envelope, header_from)
        assert code == 554, f"MAIL FROM {envelope}, From: {header_from}: {code}"
    time.sleep(3)
    assert "ceo@example.com" not in host.ssh(f"cat /home/{USER}/Maildir/new/* /var/qmail/queue/mess/*/* "
                                             "2>/dev/null | grep -a '^From:'; true").stdout


def test_submission_caps_size_and_recipients(target):
    host, _ = target
    address = f"{USER}@{DOMAIN}"
    code, _ = _send_as(host, address, address, recipients=[f"{USER}-{n}@{DOMAIN}" for n in range(MAX_RECIPIENTS + 1)])
    assert 500 <= code < 600, f"{MAX_RECIPIENTS + 1} recipients: {code}"
    code, _ = _send_as(host, address, address, recipients=[f"{USER}-{n}@{DOMAIN}" for n in range(MAX_RECIPIENTS)])
    assert code == 250
    databytes = int(host.ssh("cat /var/qmail/control/databytes").stdout)
    line = b"x" * 998 + b"\r\n"
    code, _ = _send_as(host, address, address, body=line * 2048)  # 2 MB: far over a pipe's buffer, under databytes
    assert code == 250, f"a 2 MB message got {code}"
    # qmail counts the message as queued, in LF lines: 999 bytes a line
    code, _ = _send_as(host, address, address, body=line * (databytes // (len(line) - 1) + 10))
    assert 500 <= code < 600, f"a message over databytes ({databytes}) got {code}"


# --- M6: nobody holds the host ------------------------------------------------------------------


def _greeted(host, port: int, source: str) -> socket.socket | None:
    """A connection from SOURCE that got a greeting, or None (refused, reset or silent)."""
    try:
        sock = socket.create_connection((host.address, port), timeout=15, source_address=(source, 0))
        if port == 465:
            sock = tls_context().wrap_socket(sock, server_hostname=host.address)
        if not sock.recv(512).startswith(b"220"):
            sock.close()
            return None
        return sock
    except OSError:
        return None


@pytest.mark.parametrize("port", [25, 587])
def test_one_address_cannot_fill_the_host(target, port):
    host, _ = target
    held = [_greeted(host, port, host.gateway) for _ in range(PER_ADDRESS)]
    try:
        assert all(held), "an address could not open its share of connections"
        extra = _greeted(host, port, host.gateway)
        assert extra is None, f"one address held {PER_ADDRESS + 1} connections on {port}"
        other = _greeted(host, port, host.client_address(2))
        assert other is not None, "another address was shut out too"
        other.close()
    finally:
        for sock in held:
            if sock:
                sock.close()


@pytest.mark.parametrize("port", [25, 587])
def test_a_dribbling_session_ends_in_time(target, port):
    host, _ = target
    source = host.client_address(3)
    if port == 587:
        client = _submission(host, source)  # past STARTTLS, not logged in: ofmipd's 1200 s per command apply
    else:
        client = smtplib.SMTP(host.address, port, timeout=30, source_address=(source, 0))
        client.ehlo("peer.example.net")
    started, closed_after = time.monotonic(), None
    try:
        while time.monotonic() - started < SESSION_SECONDS + 30:
            try:
                client.noop()  # never idle: only a whole-session limit ends it
            except (OSError, smtplib.SMTPException):
                closed_after = time.monotonic() - started
                break
            time.sleep(2)
    finally:
        client.close()
    assert closed_after is not None, f"a session on {port} lasted over {SESSION_SECONDS + 30} s"
    assert closed_after >= SESSION_SECONDS - 2, f"ended after {closed_after:.0f} s: not the session limit"
