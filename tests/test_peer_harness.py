"""The peer harness: a byte-for-byte relay, and Debian's Postfix in throwaway hosts as a real
peer MTA (TLS on 25 in both directions, a handshake that fails on purpose, and what Postfix's
smtp client does about it)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.peer import PeerError, PostfixPeer, Relay, link, listening_on, starttls_probe

TLS_RECEIVED = re.compile(r"\(using (TLSv1\.[23]) with cipher (\S+) ")


def _alive(pid: int) -> bool:
    try:
        return b"harness.peer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def _echo_server() -> tuple[socket.socket, int]:
    """A loopback server that sends back every byte it gets, then closes its side at EOF."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with server:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def _through(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        sender = threading.Thread(target=lambda: (conn.sendall(payload), conn.shutdown(socket.SHUT_WR)))
        sender.start()
        received = bytearray()
        while data := conn.recv(65536):
            received += data
        sender.join()
    return bytes(received)


def _install(*peers: PostfixPeer) -> None:
    """Install the peers side by side; a mirror that cannot be reached is a loud skip, not a failure."""
    def one(peer: PostfixPeer) -> None:
        try:
            peer.install()
        except PeerError as error:
            if re.search(r"Failed to fetch|Unable to connect|Could not connect|Temporary failure", str(error)):
                pytest.skip(f"SKIPPED (no Debian mirror): apt on {peer.host.name} cannot fetch postfix: "
                            f"{str(error).splitlines()[-1]}")
            raise

    with ThreadPoolExecutor(len(peers)) as pool:
        for future in [pool.submit(one, peer) for peer in peers]:
            future.result()
    for peer in peers:
        print(f"\npeer: install() on {peer.host.name} ({peer.host.suite}) took {peer.install_seconds:.1f} s "
              f"(apt {peer.apt_seconds:.1f} s)")


def _need_port_25(*addresses: str) -> None:
    for address in addresses:
        taken = listening_on(address, 25)
        if taken:
            pytest.skip(f"SKIPPED (port 25 taken): {taken} already listens in the root namespace; "
                        f"the relays need {address}:25")


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"SKIPPED (no {tool}): the laptop-side check needs it (apt-get install {tool})")


def _subject(what: str) -> str:
    return f"peer {what} {uuid.uuid4().hex[:12]}"


# --- the relay ---------------------------------------------------------------------------------


def test_relay_copies_bytes_both_ways_refuses_a_taken_port_and_stops():
    server, target = _echo_server()
    relay = Relay("127.0.0.1", _free_port(), "127.0.0.1", target)
    try:
        relay.start()
        assert relay.pid and _alive(relay.pid), "the relay runs as a process of its own, PID recorded"
        payload = os.urandom(3 * 1024 * 1024 + 17)
        echoed = _through(relay.listen[1], payload)
        assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest()
        assert len(echoed) == len(payload)  # and the half-close got through: the read ended at EOF
        assert relay.connections() == 1

        with pytest.raises(PeerError, match="taken"):
            Relay("127.0.0.1", relay.listen[1], "127.0.0.1", target).start()
    finally:
        relay.stop()
        server.close()
    assert not _alive(relay.pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", relay.listen[1]), timeout=5)


def test_relay_ends_when_the_process_that_started_it_dies():
    port = _free_port()
    starter = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from harness.peer import Relay
            relay = Relay("127.0.0.1", {port}, "127.0.0.1", 9).start()
            print(relay.pid, relay._log_path, flush=True)
            time.sleep(600)
        """)],
        cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True,
    )
    try:
        pid, log = starter.stdout.readline().split()
        pid = int(pid)
        assert _alive(pid) and Path(log).exists()
    finally:
        starter.kill()  # no stop(), no cleanup code: the starter just dies
        starter.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), f"relay {pid} outlived the process that started it"
    assert not Path(log).exists(), "the orphaned relay's log is removed with it"


# --- Postfix as a peer ---------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.slow  # the harness's own proof; tests/test_peer_tls.py uses it against qmailhost in every run
def test_swaks_from_the_laptop_through_a_relay_delivers_over_tls(make_host):
    _need("swaks")
    host = make_host()
    peer = PostfixPeer(host)  # peer.test, mx.peer.test, bob
    _install(peer)
    assert peer.running()
    _need_port_25(host.gateway)
    subject = _subject("swaks")
    with Relay(host.gateway, 25, host.address, 25) as relay:
        result = subprocess.run(
            ["swaks", "--to", "bob@peer.test", "--from", "laptop@laptop.test", "--server", f"{host.gateway}:25",
             "--tls", "--header", f"Subject: {subject}", "--timeout", "30"],
            capture_output=True, text=True, timeout=90,
        )
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr
        assert "<-  220 mx.peer.test ESMTP Postfix" in result.stdout  # the peer's banner, through the relay
        assert re.search(r"=== TLS started with cipher TLSv1\.[23]", result.stdout)
        message = peer.wait_for_message(subject, timeout=30)
        assert relay.connections() >= 1
    assert not _alive(relay.pid)

    received = message.split("\n\n", 1)[0]
    assert TLS_RECEIVED.search(received), received
    assert "by mx.peer.test (Postfix) with ESMTPS" in received
    assert f"(unknown [{host.gateway}])" in received  # the relay connects from the gateway
    assert re.search(rf"TLS connection established from unknown\[{re.escape(host.gateway)}\]: TLSv1\.[23] ",
                     peer.log())


@pytest.mark.e2e
@pytest.mark.slow  # as above
def test_two_peers_mail_over_tls_and_refuse_plaintext_when_the_handshake_breaks(make_host):
    _need("openssl")
    a_host, b_host = make_host(), make_host()
    a, b = PostfixPeer(a_host, "peer.test"), PostfixPeer(b_host, "other.test")
    _install(a, b)
    _need_port_25(a_host.gateway, b_host.gateway)
    with link(a_host, b_host) as linked:
        # Both ways, over TLS, through the relays (a sends via [a.gateway]:25, b via [b.gateway]:25).
        there, back = _subject("there"), _subject("back")
        a.send("alice@peer.test", "bob@other.test", there)
        b.send("carol@other.test", "bob@peer.test", back)
        for receiver, subject, client in ((b, there, b_host.gateway), (a, back, a_host.gateway)):
            received = receiver.wait_for_message(subject, timeout=60).split("\n\n", 1)[0]
            assert TLS_RECEIVED.search(received), received
            assert f"by {receiver.hostname} (Postfix) with ESMTPS" in received
            assert re.search(rf"TLS connection established from unknown\[{re.escape(client)}\]: TLSv1\.[23] ",
                             receiver.log())
        assert re.search(rf"TLS connection established to {re.escape(a_host.gateway)}\[[^]]+\]:25: TLSv1\.[23] ",
                         a.log())
        assert all(relay.connections() >= 1 for relay in linked.relays)

        # Broken: STARTTLS is still offered, and every handshake fails.
        assert starttls_probe(a_host.gateway).handshake_ok
        b.break_tls()
        probe = starttls_probe(a_host.gateway)
        assert probe.starttls_offered, probe.output
        assert not probe.handshake_ok, probe.output
        assert "handshake failure" in probe.output
        assert "no shared cipher" in b.log()

        # Opportunistic (smtp_tls_security_level = may), as recorded: Postfix defers a new message
        # ("Cannot start TLS: handshake failure", 4.7.5), and once the message is older than
        # minimal_backoff_time it reconnects and delivers it in plaintext.
        assert a.get("smtp_tls_security_level") == "may"
        opportunistic = _subject("may")
        queued = time.monotonic()
        message_id = a.send("alice@peer.test", "bob@other.test", opportunistic)
        first = a.wait_for_status(message_id, timeout=30)
        assert "status=deferred (Cannot start TLS: handshake failure)" in first, first
        time.sleep(max(0.0, queued + 11 - time.monotonic()))  # minimal_backoff_time is 10s
        a.flush()
        sent = a.wait_for_status(message_id, "sent", timeout=60)
        print(f"\npeer: with `may` and a failed handshake, Postfix deferred, then: {sent.split(': ', 1)[1]}")
        received = b.wait_for_message(opportunistic, timeout=30).split("\n\n", 1)[0]
        assert "using TLS" not in received and "by mx.other.test (Postfix) with ESMTP id" in received, received

        # Required (encrypt): deferred on every try, never delivered in plaintext.
        a.require_tls_outbound()
        required = _subject("encrypt")
        queued = time.monotonic()
        message_id = a.send("alice@peer.test", "bob@other.test", required)
        first = a.wait_for_status(message_id, timeout=30)
        assert "status=deferred (Cannot start TLS: handshake failure)" in first, first
        time.sleep(max(0.0, queued + 11 - time.monotonic()))  # old enough for `may` to fall back
        a.flush()
        second = a.wait_for_status(message_id, after=1, timeout=60)
        assert "status=deferred (Cannot start TLS: handshake failure)" in second, second
        assert b.find_message(required) is None
        assert message_id not in b.log()  # no DATA reached b at all
        assert required in a.ssh(f"postcat -q {a.queue_id(message_id)}").stdout  # still queued at a

        # Fixed: the queued message goes out over TLS.
        b.fix_tls()
        assert starttls_probe(a_host.gateway).handshake_ok
        a.flush()
        assert "status=sent" in a.wait_for_status(message_id, "sent", timeout=60)
        received = b.wait_for_message(required, timeout=30).split("\n\n", 1)[0]
        assert TLS_RECEIVED.search(received), received
    assert not any(_alive(relay.pid) for relay in linked.relays)
