"""files/spamdyke/tls-wait.patch against the pinned spamdyke release (issue 27): it
applies exactly; the TLS handshake, reads, writes and shutdown then wait on the socket instead of a
fixed 0.5 s; and a spamdyke built with it still does STARTTLS, the session after it, and a message
whose TLS records reach it in pieces (on loopback, no host). How much faster it is gets measured in
bench/, never here."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from harness.pyinfra_cli import LOCAL_MIRROR
from qmailhost.files import FILES
from qmailhost.sources import PINS

pytestmark = [pytest.mark.sources]

PATCH = FILES / "spamdyke" / "tls-wait.patch"
FIXED_WAIT = ("tmp_timeval.tv_sec = MIN_SELECT_SECS_TIMEOUT;\n"
              "            tmp_timeval.tv_usec = MIN_SELECT_USECS_TIMEOUT;\n"
              "            select(0, NULL, NULL, NULL, &tmp_timeval);")


def _tarball() -> Path:
    """The pinned spamdyke release where the sources fixture found the distfiles."""
    name = PINS["spamdyke"].filename
    if os.environ.get("QMAILHOST_DISTFILES"):
        return Path(os.environ["QMAILHOST_DISTFILES"]) / name
    if (LOCAL_MIRROR / "SHA512SUMS").exists():
        return LOCAL_MIRROR / name
    return Path.home() / ".cache/qmailhost/distfiles" / name


def _unpack(dest: Path) -> Path:
    with tarfile.open(_tarball()) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()  # spamdyke-5.0.1/: spamdyke/, spamdyke-qrv/
    return top


def _patch(top: Path, *options: str) -> str:
    with PATCH.open("rb") as patch:
        run = subprocess.run(["patch", "-p1", *options], stdin=patch, cwd=top, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


# Each loop of tls.c that slept the fixed wait when OpenSSL wanted more: the call, and how many
# seconds its command timeout is capped at (tls_end's TIMEOUT_TLS_SHUTDOWN_SECS; 0: not capped).
LOOPS = {"SSL_accept(current_settings->tls_session)": "0",
         "SSL_read(current_settings->tls_session, target_buf, num_bytes)": "0",
         "SSL_write(current_settings->tls_session, target_buf, num_bytes)": "0",
         "SSL_shutdown(*target_tls_session)": "TIMEOUT_TLS_SHUTDOWN_SECS"}


def _loop(source: str, call: str) -> str:
    """The loop around CALL, from the call to its switch's default case."""
    start = source.index(call)
    return source[start:source.index("default:", start)]


def test_the_patch_applies_exactly_and_tls_waits_on_the_socket(sources, tmp_path):
    top = _unpack(tmp_path)
    before = (top / "spamdyke/tls.c").read_text()
    for call in LOOPS:
        assert FIXED_WAIT in _loop(before, call), f"the release no longer has the fixed wait the patch replaces: {call}"
        assert "tls_wait(" not in _loop(before, call)
    for options in (["--dry-run"], []):
        output = _patch(top, *options)
        assert not re.search(r"fuzz|offset|Hunk|reject|FAILED", output, re.I), output
        assert output.strip() == f"{'checking' if options else 'patching'} file spamdyke/tls.c", output
    source = (top / "spamdyke/tls.c").read_text()
    for call, limit in LOOPS.items():
        loop = _loop(source, call)
        # Wanting to read or write, the loop waits on the socket and goes round again; the fixed
        # wait is left only to the cases that are no socket wait (X509 lookup and the like).
        assert re.search(r"case SSL_ERROR_WANT_READ:\s*case SSL_ERROR_WANT_WRITE:\s*"
                         rf"tls_wait\(current_settings, {limit}\);\s*break;", loop), (call, loop)
        assert loop.index("tls_wait(") < loop.index(FIXED_WAIT), call
    helper = source[source.index("static void tls_wait("):source.index("int tls_start(")]
    # It selects on the descriptor OpenSSL waits for, up to the loop's own deadline (none: the socket alone).
    assert "select(wait_fd + 1, want_write ? NULL : &wait_fds, want_write ? &wait_fds : NULL, NULL, " \
           "(deadline == 0) ? NULL : &wait_time);" in helper
    assert "SSL_want_write(current_settings->tls_session)" in helper
    assert ("wait_fd = want_write ? SSL_get_wfd(current_settings->tls_session) : "
            "SSL_get_rfd(current_settings->tls_session);") in helper
    for timeout in ("timeout_command", "timeout_connection"):
        assert f"current_settings->current_options->{timeout}" in helper
    assert "(limit_secs < command_secs)" in helper  # tls_end's 5 s, when shorter than the command timeout
    # Our own lines, not upstream's: the patch carries no more context than patch needs.
    text = PATCH.read_text()
    context = [line for line in text.splitlines() if line.startswith(" ")]
    assert len(context) <= 2 * text.count("\n@@ "), context


CHILD = """#!/bin/sh
# The least SMTP server: what spamdyke runs behind it. A message goes to $0.message.
printf '220 child ESMTP\\r\\n'
while IFS= read -r line; do
  case "$(printf '%s' "$line" | tr -d '\\r' | cut -c1-4 | tr a-z A-Z)" in
    EHLO) printf '250-child\\r\\n250 8BITMIME\\r\\n' ;;
    DATA) printf '354 go on\\r\\n'; sed '/^\\.\\r*$/q' > "$0.message"; printf '250 ok\\r\\n' ;;
    QUIT) printf '221 bye\\r\\n'; exit 0 ;;
    *) printf '250 ok\\r\\n' ;;
  esac
done
"""


def _serve(listener: socket.socket, argv: list, log, children: list, stop: threading.Event) -> None:
    """tcpserver's part: spamdyke per connection, the socket as its stdin and stdout."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, (address, port) = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        env = dict(os.environ, TCPREMOTEIP=address, TCPREMOTEPORT=str(port), TCPLOCALIP="127.0.0.1", PROTO="TCP")
        with conn:
            children.append(subprocess.Popen(argv, stdin=conn, stdout=conn, stderr=log, env=env))


@pytest.fixture(scope="module")
def patched_spamdyke(sources, tmp_path_factory) -> tuple[Path, Path]:
    """spamdyke built from the release with the patch, and a throwaway certificate beside it."""
    missing = [tool for tool in ("cc", "make", "patch", "openssl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"SKIPPED (no {', '.join(missing)}): building spamdyke needs build-essential, patch, "
                    "openssl and libssl-dev")
    work = tmp_path_factory.mktemp("spamdyke")
    top = _unpack(work / "src")
    _patch(top)
    build = subprocess.run("ac_cv_search_SSL_library_init=-lssl ./configure --enable-tls && make",
                           shell=True, cwd=top / "spamdyke", capture_output=True, text=True)
    assert build.returncode == 0, (build.stdout + build.stderr)[-3000:]
    program = top / "spamdyke/spamdyke"
    version = subprocess.run([program, "-v"], capture_output=True, text=True)
    assert "+TLS" in version.stdout + version.stderr, "built without TLS: is libssl-dev installed?"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", work / "key.pem", "-out", work / "cert.pem"],
                   check=True, capture_output=True)
    return program, work


class _Spamdyke:
    """The patched spamdyke behind a loopback port, CHILD behind it; on leaving, every spamdyke started
    has ended (or is killed), and .message and .log hold what the child got and spamdyke logged."""

    def __init__(self, built: tuple[Path, Path], tmp_path: Path):
        program, work = built
        child = tmp_path / "child.sh"
        child.write_text(CHILD)
        child.chmod(0o755)
        config = tmp_path / "spamdyke.conf"
        config.write_text("\n".join([
            "log-level=info", "log-target=stderr", "idle-timeout-secs=30", "connection-timeout-secs=60",
            "tls-level=smtp", f"tls-certificate-file={work / 'cert.pem'}",
            f"tls-privatekey-file={work / 'key.pem'}", "smtp-auth-level=none", "graylist-level=none",
            "dns-level=none", "relay-level=allow-all", ""]))
        self.argv = [program, "-f", config, child]
        self.message, self.log = tmp_path / "child.sh.message", tmp_path / "spamdyke.log"

    def __enter__(self) -> int:
        self.listener, self.stop, self.children = socket.create_server(("127.0.0.1", 0)), threading.Event(), []
        self.log_file = self.log.open("w")
        self.server = threading.Thread(target=_serve, args=(self.listener, self.argv, self.log_file, self.children,
                                                            self.stop))
        self.server.start()
        return self.listener.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.join()
        self.listener.close()
        for process in self.children:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.log_file.close()


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def test_a_patched_spamdyke_does_starttls_and_the_session_goes_on(patched_spamdyke, tmp_path):
    spamdyke = _Spamdyke(patched_spamdyke, tmp_path)
    with spamdyke as port, smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.ehlo("client.example")
        assert smtp.has_extn("starttls"), smtp.esmtp_features
        assert smtp.starttls(context=_client_context())[0] == 220
        assert smtp.sock.version().startswith("TLS")
        code, answer = smtp.ehlo("client.example")  # the first bytes over TLS, and their answer
        assert code == 250 and b"8BITMIME" in answer, (code, answer)
        assert smtp.sendmail("sender@example.org", ["recipient@example.org"],
                             "Subject: over TLS\r\n\r\nA test message.\r\n") == {}
        assert smtp.quit()[0] == 221
    assert "A test message." in spamdyke.message.read_text()
    # spamdyke's own record of the message: taken over TLS.
    log = spamdyke.log.read_text()
    assert re.search(r"ALLOWED from: sender@example\.org to: recipient@example\.org .* encryption: TLS ", log), log


class _PiecemealTLS:
    """SMTP with STARTTLS over a plain socket, TLS done by hand (ssl.MemoryBIO), so that the bytes of
    each TLS record can be sent in pieces: spamdyke then reads part of a record and OpenSSL wants more."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.received, self.tls = b"", None
        assert self.reply().startswith(b"220")
        self.sock.sendall(b"EHLO client.example\r\n")
        assert b"STARTTLS" in self.reply()
        self.sock.sendall(b"STARTTLS\r\n")
        assert self.reply().startswith(b"220")
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = _client_context().wrap_bio(self.incoming, self.outgoing)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self._receive()
        self.sock.sendall(self.outgoing.read())

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        assert data, "spamdyke closed the connection"
        self.incoming.write(data)

    def _read(self) -> bytes:
        if self.tls is None:
            data = self.sock.recv(65536)
            assert data, "spamdyke closed the connection"
            return data
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()

    def reply(self) -> bytes:
        """The next SMTP reply, to its last line."""
        while not (end := re.search(rb"(?m)^\d{3} [^\n]*\n", self.received)):
            self.received += self._read()
        reply, self.received = self.received[:end.end()], self.received[end.end():]
        return reply

    def send(self, data: bytes, piece: int | None = None, gap: float = 0.02) -> None:
        """DATA over TLS, its bytes on the wire in PIECE-byte parts (None: two halves) GAP seconds apart."""
        self.tls.write(data)
        wire = self.outgoing.read()
        piece = piece or len(wire) // 2 + 1
        for start in range(0, len(wire), piece):
            self.sock.sendall(wire[start:start + piece])
            time.sleep(gap)


def test_a_message_whose_tls_records_arrive_in_pieces_arrives_whole(patched_spamdyke, tmp_path):
    # Lines that differ, so a lost, doubled or reordered piece shows; about 1 MB, 64 TLS records.
    body = b"Subject: in pieces\r\n\r\n" + b"".join(b"%07d " % i + b"x" * 70 + b"\r\n" for i in range(13000))
    spamdyke = _Spamdyke(patched_spamdyke, tmp_path)
    with spamdyke as port:
        client = _PiecemealTLS(port)
        with client.sock:
            # Each command's record in two halves 20 ms apart: spamdyke has read half a record.
            for command, code in ((b"EHLO client.example", b"250"), (b"MAIL FROM:<sender@example.org>", b"250"),
                                  (b"RCPT TO:<recipient@example.org>", b"250"), (b"DATA", b"354")):
                client.send(command + b"\r\n")
                reply = client.reply()
                assert reply.startswith(code), (command, reply)
            # The message in 7001-byte pieces, which no 16 KB record boundary lines up with.
            client.send(body + b".\r\n", piece=7001, gap=0.001)
            assert client.reply().startswith(b"250")
            client.send(b"QUIT\r\n")
            assert client.reply().startswith(b"221")
    assert spamdyke.message.read_bytes() == body + b".\r\n"
    log = spamdyke.log.read_text()
    assert re.search(r"ALLOWED from: sender@example\.org to: recipient@example\.org .* encryption: TLS ", log), log
