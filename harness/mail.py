"""SMTP from the laptop's side, as a mail client would: submission with STARTTLS and
AUTH on 587 or implicit TLS on 465, plain SMTP on 25, and a look into a Maildir on the host."""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import time
import uuid
from email.message import EmailMessage

from harness.sandbox import SANDBOX_DOMAIN, Host


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


def submit(host: Host, user: str, password: str, msg: EmailMessage, mechanism: str | None = None,
           port: int = 587, implicit_tls: bool = False) -> None:
    """Submit MSG on PORT as a mail client does: STARTTLS and EHLO again (or, IMPLICIT_TLS, TLS
    from the first byte, as on 465, and one EHLO), then log in with what that EHLO offers
    (smtplib's login(), which refuses a server that offers no AUTH), or with MECHANISM as a
    client set to it would (refused unless the EHLO offers it). Raises on any refusal."""
    if implicit_tls:
        client = smtplib.SMTP_SSL(host.address, port, timeout=30, context=tls_context())
    else:
        client = smtplib.SMTP(host.address, port, timeout=30)
    with client:
        client.ehlo("laptop.test")
        if not implicit_tls:
            client.starttls(context=tls_context())
            client.ehlo("laptop.test")
        if mechanism is None:
            client.login(user, password)
        else:
            offered = client.esmtp_features.get("auth", "").upper().split()
            if mechanism not in offered:
                raise smtplib.SMTPNotSupportedError(f"AUTH {mechanism} is not offered after STARTTLS ({offered})")
            client.user, client.password = user, password
            auth = client.auth_plain if mechanism == "PLAIN" else client.auth_login
            client.auth(mechanism, auth, initial_response_ok=mechanism == "PLAIN")
        client.send_message(msg)


def swaks(host: Host, user: str, password: str, subject: str, port: int = 587, tls: str = "--tls",
          auth: str | None = None, check: bool = True, login: bool = True) -> subprocess.CompletedProcess:
    """Submit a message with swaks, as its users do: `--tls` (STARTTLS) or `--tls-on-connect`
    (TLS from the first byte), `--auth` (the mechanism swaks picks from what the EHLO offers,
    or AUTH; none without LOGIN). Its output is the whole transaction as swaks saw it."""
    argv = ["swaks", "--server", host.address, "--port", str(port), tls, "--tls-protocol", "tlsv1_2,tlsv1_3",
            *(["--auth", *([auth] if auth else []), "--auth-user", user, "--auth-password", password]
              if login else []),
            "--from", f"{user}@{SANDBOX_DOMAIN}", "--to", f"{user}@{SANDBOX_DOMAIN}",
            "--header", f"Subject: {subject}", "--body", "Sent with swaks by qmailhost's tests.", "--timeout", "30"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    if check and result.returncode != 0:
        raise AssertionError(f"swaks exited {result.returncode}: {(result.stdout + result.stderr)[-1500:]}")
    return result


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


def queue_a_pending_message(host: Host, subject: str) -> None:
    """A message for a remote address: the sandbox reaches no name server, so it waits in the queue
    (not under .invalid, which the host's unbound answers itself: no such domain, a bounce)."""
    host.ssh(f"printf 'Subject: {subject}\\n\\nwaiting\\n' | /var/qmail/bin/qmail-inject someone@unreachable.example.net")
    deadline = time.monotonic() + 30
    while "deferral" not in host.ssh("cat /var/log/qmail/qmail-send/current").stdout:
        assert time.monotonic() < deadline, "the remote delivery was not deferred"
        time.sleep(0.3)
    assert "someone@unreachable.example.net" in host.ssh("/var/qmail/bin/qmail-qread").stdout


# A shell script (str.format: {count}) that fills alice's Maildir/cur with COUNT small read
# messages of varied sizes, for the large-mailbox benches.
LARGE_MAILDIR = r"""
set -e
cd /home/alice/Maildir/cur
line=$(printf '%070d' 0)
i=0
while [ $i -lt {count} ]; do
  {{ printf 'From: bulk@example.org\nTo: alice@sandbox.test\nSubject: bulk %d\n\n' $i
     j=0; while [ $j -lt $((i % 40 + 5)) ]; do echo "$i $line"; j=$((j + 1)); done; }} > "1700$i.M${{i}}P1.bulk:2,S"
  i=$((i + 1))
done
chown alice:alice . -R
"""
