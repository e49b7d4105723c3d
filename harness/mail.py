"""SMTP from the laptop's side, as a mail client would: submission with STARTTLS and
AUTH on 587, plain SMTP on 25, and a look into a Maildir on the host."""

from __future__ import annotations

import smtplib
import ssl
import time
import uuid
from email.message import EmailMessage

from harness.sandbox import Host


def tls_context(minimum: ssl.TLSVersion | None = None, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the sandbox's certificate is self-signed
    if minimum or maximum:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = minimum or ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum or ssl.TLSVersion.MAXIMUM_SUPPORTED
    return context


def message(sender: str, recipient: str, subject: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, recipient
    msg["Subject"] = subject or f"qmailhost test {uuid.uuid4().hex}"
    msg.set_content("A test message from qmailhost's tests.\n")
    return msg


def submit(host: Host, user: str, password: str, msg: EmailMessage, mechanism: str = "PLAIN",
           port: int = 587) -> None:
    """Submit MSG on PORT with STARTTLS and AUTH MECHANISM (raises on any refusal)."""
    with smtplib.SMTP(host.address, port, timeout=30) as client:
        client.ehlo("laptop.test")
        client.starttls(context=tls_context())
        client.ehlo("laptop.test")
        client.user, client.password = user, password
        auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        client.auth(mechanism, auth, initial_response_ok=mechanism == "PLAIN")
        client.send_message(msg)


def submit_when_up(host: Host, user: str, password: str, msg: EmailMessage, timeout: float = 20) -> None:
    """submit(), retried while the services a deploy just started come up (raises after TIMEOUT)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return submit(host, user, password, msg)
        except (OSError, smtplib.SMTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_for_delivery(host: Host, user: str, subject: str, timeout: float = 30) -> str:
    """The path of the message with SUBJECT in USER's Maildir/new, waiting for qmail-send."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = host.ssh(f"grep -l -F 'Subject: {subject}' /home/{user}/Maildir/new/* 2>/dev/null; true").stdout
        if found.strip():
            return found.split()[0]
        time.sleep(0.3)
    raise AssertionError(f"no message {subject!r} in {user}'s Maildir within {timeout} s")
