"""IMAP from the laptop's side, as mail clients do it: Python's imaplib (implicit TLS on
993, or STARTTLS on 143 after reading the capabilities) and curl's IMAP support with the
host's own certificate as the trust anchor and its name checked. Passwords reach curl
through a netrc file readable by this process's user only, never its command line."""

from __future__ import annotations

import contextlib
import imaplib
import re
import socket
import ssl
import subprocess
import tempfile
import time
from email import message_from_bytes
from pathlib import Path

from harness.sandbox import SANDBOX_DOMAIN, Host

HOSTNAME = f"mail.{SANDBOX_DOMAIN}"


def certificate_file(host: Host, directory: Path) -> Path:
    """The certificate the host serves, as a PEM file a client can trust (it is self-signed)."""
    path = directory / f"{host.name}-cert.pem"
    path.write_text(host.ssh("cat /etc/qmailhost/tls/cert.pem").stdout)
    return path


def verifying_context(cafile: Path) -> ssl.SSLContext:
    """A client context that trusts only CAFILE and checks that it names the host."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = True
    return context


@contextlib.contextmanager
def session(host: Host, user: str, password: str, port: int = 993, context: ssl.SSLContext | None = None,
            starttls: bool | None = None):
    """An IMAP session logged in as USER: TLS from the first byte on 993, STARTTLS on 143
    (as imaplib does it: only when the greeting's capabilities offer it). A verifying
    CONTEXT checks the name HOSTNAME, the way a client set up with that name would."""
    starttls = port == 143 if starttls is None else starttls
    context = context or _unverified()
    name = HOSTNAME if context.check_hostname else None
    with resolving(name, host.address):
        if starttls:
            client = imaplib.IMAP4(name or host.address, port, timeout=30)
            if "STARTTLS" not in client.capabilities:
                client.shutdown()
                raise AssertionError(f"port {port} offers no STARTTLS: {client.capabilities}")
            client.starttls(ssl_context=context)
        else:
            client = imaplib.IMAP4_SSL(name or host.address, port, ssl_context=context, timeout=30)
    try:
        client.login(user, password)
        yield client
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


def login_when_up(host: Host, user: str, password: str, timeout: float = 30, port: int = 993) -> float:
    """Seconds until USER can log in on PORT (a deploy has just started Dovecot)."""
    started = time.monotonic()
    while True:
        try:
            with session(host, user, password, port):
                return time.monotonic() - started
        except (OSError, imaplib.IMAP4.error):
            if time.monotonic() - started > timeout:
                raise
            time.sleep(0.1)


def find(client: imaplib.IMAP4, subject: str, mailbox: str = "INBOX") -> bytes:
    """The UID of the one message in MAILBOX whose Subject holds SUBJECT."""
    client.select(mailbox)
    status, data = client.uid("SEARCH", "HEADER", "Subject", '"' + subject.replace('"', "") + '"')
    uids = data[0].split() if status == "OK" else []
    assert len(uids) == 1, f"{len(uids)} messages with {subject!r} in {mailbox}: {data!r}"
    return uids[0]


def fetch(client: imaplib.IMAP4, uid: bytes):
    """The message UID as an email.message.Message (BODY.PEEK: its \\Seen flag untouched)."""
    status, data = client.uid("FETCH", uid, "(BODY.PEEK[])")
    assert status == "OK" and data and isinstance(data[0], tuple), data
    return message_from_bytes(data[0][1])


def flags(client: imaplib.IMAP4, uid: bytes) -> set[str]:
    status, data = client.uid("FETCH", uid, "(FLAGS)")
    assert status == "OK", data
    return set(re.search(rb"FLAGS \(([^)]*)\)", data[0])[1].decode().split())


def curl(host: Host, user: str, password: str, url_path: str, cafile: Path, port: int = 993,
         extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """curl against the host by its name (HOSTNAME resolved to its address), trusting CAFILE
    only: imaps:// on 993, imap:// with --ssl-reqd (STARTTLS or nothing) on 143."""
    scheme = "imap" if port == 143 else "imaps"
    with tempfile.TemporaryDirectory() as directory:
        netrc = Path(directory) / "netrc"
        netrc.touch(mode=0o600)
        netrc.write_text(f"machine {HOSTNAME} login {user} password {password}\n")
        argv = ["curl", "--silent", "--show-error", "--max-time", "30", "--netrc-file", str(netrc),
                "--cacert", str(cafile), "--resolve", f"{HOSTNAME}:{port}:{host.address}",
                *(["--ssl-reqd"] if port == 143 else []), *extra, f"{scheme}://{HOSTNAME}:{port}/{url_path}"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@contextlib.contextmanager
def resolving(name: str | None, address: str):
    """While connecting, NAME resolves to ADDRESS for this process (what /etc/hosts would do)."""
    if name is None:
        yield
        return
    original = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return original(address if host == name else host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = original



def flags_by_subject(client: imaplib.IMAP4, mailbox: str = "INBOX") -> dict[str, frozenset[str]]:
    """{Subject: its flags} of every message in MAILBOX (opened read-only; \\Recent left out:
    it is the session's, not the message's)."""
    client.select(mailbox, readonly=True)
    status, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert status == "OK", data
    found = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        subject = message_from_bytes(item[1])["Subject"]
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", item[0])[1].decode().split()) - {"\\Recent"}
        found[subject] = frozenset(flags)
    return found
