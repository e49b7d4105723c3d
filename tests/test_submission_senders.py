"""What a logged-in account may send as (files/submission/senders.py and its table, tasks/submission.py).

The table the deploy writes from the settings (own addresses, extensions, aliases, virtual
domains, extra_senders) and the filter's decisions on envelopes and headers as ofmipd hands
them over. On a deployed host, through smtplib: tests/test_attacks.py.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

from qmailhost.files import path as file_path
from qmailhost.platform import debian
from qmailhost.settings import Settings
from tasks import submission

_spec = importlib.util.spec_from_file_location("senders", file_path("submission/senders.py"))
senders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(senders)


@pytest.fixture
def table(monkeypatch) -> dict:
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
    account = {"password_env": "QMAILHOST_TEST_PASSWORD"}
    settings = Settings.from_host_data({
        "hostname": "mail.example.org", "domains": ["example.org", "example.net"],
        "accounts": [{"name": "alice", **account}, {"name": "bob", **account}],
        "aliases": {"postmaster": "alice", "sales": "bob"},
        "virtualdomains": {"lists.example.com": "alice-lists", "bob.example": "bob"},
        "extra_senders": {"alice": ["alice@club.example", "@alice.example"]},
        "submission_max_recipients": 3, "databytes": 5000})
    return json.loads(submission.sender_table(debian("13"), settings))


ALICE_OWNS = ["alice@example.org", "ALICE@Example.NET", "alice@mail.example.org", "alice-news@example.org",
              "postmaster@example.net", "any@lists.example.com", "alice@club.example", "me@alice.example"]
NOT_HERS = ["bob@example.org", "sales@example.org", "x@bob.example", "ceo@example.com", "alice@example.com",
            "aliceb@example.org", "alice-x@club.example", "webmaster@example.org", "alice", "@example.org"]


@pytest.mark.parametrize("address", ALICE_OWNS)
def test_what_alice_may_send_as(table, address):
    assert senders.owns(table["accounts"]["alice"], address)


@pytest.mark.parametrize("address", NOT_HERS)
def test_what_alice_may_not_send_as(table, address):
    assert not senders.owns(table["accounts"]["alice"], address)


HEADER = b"From: Alice <alice@example.org>\nTo: x@peer.example\nSubject: hi\n"


@pytest.mark.parametrize("user, sender, recipients, header, size, why", [
    ("alice", "alice@example.org", ["a@x.example"], HEADER, 100, None),
    ("alice", "", ["a@x.example"], HEADER, 100, None),  # a null sender: From: still counts
    ("alice", "bob@example.org", ["a@x.example"], HEADER, 100, "envelope sender bob@example.org is not alice's"),
    ("alice", "alice@example.org", ["a@x.example"], b"From: The CEO <ceo@example.com>\n", 100,
     "From: ceo@example.com is not alice's"),
    ("alice", "alice@example.org", ["a@x.example"], b"From: alice@example.org, ceo@example.com\n", 100,
     "From: ceo@example.com is not alice's"),
    ("alice", "alice@example.org", ["a@x.example"], HEADER + b"Sender: bob@example.org\n", 100,
     "Sender: bob@example.org is not alice's"),
    ("alice", "alice@example.org", ["a@x.example"], b"From: undisclosed\n", 100, "From: holds something"),
    ("alice", "alice@example.org", ["a@x.example"] * 4, HEADER, 100, "4 recipients, over max_recipients (3)"),
    ("alice", "alice@example.org", ["a@x.example"], HEADER, 5001, "over databytes (5000 bytes)"),
    (None, "alice@example.org", ["a@x.example"], HEADER, 100, "None is no mail account"),
    ("root", "root@example.org", ["a@x.example"], HEADER, 100, "'root' is no mail account"),
])
def test_the_filters_decisions(table, user, sender, recipients, header, size, why):
    said = senders.refusal(table, user, sender, recipients, header, size)
    assert (said is None) if why is None else (said is not None and said.startswith(why)), said


def test_the_envelope_as_qmail_queue_reads_it():
    assert senders.envelope_of(b"Falice@example.org\0Ta@x.example\0Tb@y.example\0\0") == (
        "alice@example.org", ["a@x.example", "b@y.example"])
    with pytest.raises(ValueError):
        senders.envelope_of(b"Ta@x.example\0\0")


def _as_ofmipd_runs_it(tmp_path, table: dict, sender: str, header_from: str) -> tuple[int, bytes, bytes]:
    """The filter as the AUTH-patched ofmipd runs it after a login: message on fd 0, envelope
    on fd 1, and fd 2 the client's connection (here one end of a socket pair). Returns its
    exit status, what reached the connection, and what the real qmail-queue (a recorder) got."""
    import shutil
    import socket
    import subprocess
    import sys

    shutil.copy(file_path("submission/senders.py"), tmp_path / "senders.py")
    queue = tmp_path / "qmail-queue"
    queue.write_text(f"#!{sys.executable}\nimport sys\nopen({str(tmp_path / 'queued')!r}, 'wb')"
                     ".write(sys.stdin.buffer.read())\n")
    queue.chmod(0o755)
    (tmp_path / "senders.json").write_text(json.dumps({**table, "queue": str(queue)}))
    message = tmp_path / "message"
    message.write_bytes(f"From: {header_from}\r\nSubject: hi\r\n\r\nhello\r\n".encode())
    envelope = tmp_path / "envelope"
    envelope.write_bytes(f"F{sender}\0Tsomeone@example.com\0\0".encode())
    client, ours = socket.socketpair()
    with client, ours, open(message, "rb") as fd0, open(envelope, "rb") as fd1:
        status = subprocess.run([sys.executable, str(tmp_path / "senders.py")], stdin=fd0, stdout=fd1,
                                stderr=ours.fileno(), env={"TCPREMOTEINFO": "alice"}, timeout=30).returncode
        client.setblocking(False)
        try:
            said = client.recv(4096)
        except BlockingIOError:
            said = b""
    queued = (tmp_path / "queued").read_bytes() if (tmp_path / "queued").exists() else b""
    return status, said, queued


def test_after_a_login_the_filter_writes_nothing_to_the_clients_connection(table, tmp_path):
    status, said, queued = _as_ofmipd_runs_it(tmp_path, table, "ceo@example.com", "ceo@example.com")
    assert (status, said, queued) == (senders.REFUSED, b"", b"")
    status, said, queued = _as_ofmipd_runs_it(tmp_path, table, "alice@example.org", "Alice <alice@example.org>")
    assert (status, said) == (0, b"") and b"Subject: hi" in queued


def test_a_message_over_databytes_is_read_to_its_end_then_refused(table, tmp_path):
    """ofmipd streams DATA into the filter: the filter reads all of it (a writer that met a
    closed pipe would die mid-DATA, the client seeing a dropped connection), then refuses."""
    import shutil
    import subprocess
    import sys

    shutil.copy(file_path("submission/senders.py"), tmp_path / "senders.py")
    (tmp_path / "senders.json").write_text(json.dumps({**table, "queue": "/bin/false"}))
    envelope = tmp_path / "envelope"
    envelope.write_bytes(b"Falice@example.org\0Tsomeone@example.com\0\0")
    with open(envelope, "rb") as fd1:
        filter_ = subprocess.Popen([sys.executable, str(tmp_path / "senders.py")], stdin=subprocess.PIPE,
                                   stdout=fd1, stderr=subprocess.DEVNULL, env={"TCPREMOTEINFO": "alice"})
        message = b"From: alice@example.org\r\n\r\n" + b"x" * 998 + b"\r\n"
        for _ in range(20 * table["databytes"] // 1000):  # 20 times databytes, over any pipe's buffer
            filter_.stdin.write(message[-1000:])  # a BrokenPipeError here is the failure
        filter_.stdin.close()
        assert filter_.wait(timeout=30) == senders.REFUSED


def test_a_message_over_a_pipes_buffer_passes_in_qmail_queues_order(table, tmp_path):
    """ofmipd writes the whole message to fd 0, and only then the envelope to fd 1: a filter
    that read the envelope first would wait for ever on any message over 64 KB."""
    import shutil
    import subprocess
    import sys
    import threading

    shutil.copy(file_path("submission/senders.py"), tmp_path / "senders.py")
    queue = tmp_path / "qmail-queue"
    queue.write_text(f"#!{sys.executable}\nimport sys\nopen({str(tmp_path / 'queued')!r}, 'wb')"
                     ".write(sys.stdin.buffer.read())\n")
    queue.chmod(0o755)
    (tmp_path / "senders.json").write_text(json.dumps({**table, "queue": str(queue), "databytes": 10_000_000}))
    envelope_read, envelope_write = os.pipe()
    filter_ = subprocess.Popen([sys.executable, str(tmp_path / "senders.py")], stdin=subprocess.PIPE,
                               stdout=envelope_read, stderr=subprocess.DEVNULL, env={"TCPREMOTEINFO": "alice"})
    os.close(envelope_read)
    message = b"From: alice@example.org\n\n" + (b"x" * 998 + b"\n") * 1000  # 1 MB, in qmail's LF lines

    def ofmipd():
        filter_.stdin.write(message)
        filter_.stdin.close()
        os.write(envelope_write, b"Falice@example.org\0Tsomeone@example.com\0\0")
        os.close(envelope_write)

    writer = threading.Thread(target=ofmipd, daemon=True)
    writer.start()
    try:
        assert filter_.wait(timeout=30) == 0
    except subprocess.TimeoutExpired:
        filter_.kill()
        raise AssertionError("the filter and its writer waited on each other") from None
    writer.join(5)
    assert (tmp_path / "queued").read_bytes() == message
