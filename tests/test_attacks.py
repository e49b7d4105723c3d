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

from harness import sandbox
from harness.mail import message, submit, tls_context, wait_for_delivery
from harness.pyinfra_cli import pyinfra

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN
SYSTEM_USER = "backupd"  # a system account (useradd -r: uid below 1000) that is no mail account
ENDLESS_LIMIT = 256 * 1024 * 1024  # the most the endless-line attack sends
CHUNK = 1024 * 1024
VIRTUAL = "lists.sandbox.test"  # a virtual domain delivered to alice-<local part>


@pytest.fixture(scope="module")
def target(sandbox_ready, sources):
    host = sandbox.create(f"t{os.getpid()}-attacks")
    try:
        pyinfra(host, data={"virtualdomains": {VIRTUAL: USER}})
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
