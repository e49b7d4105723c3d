"""The inbound filter's spam verdict (files/dkim/authres.py with an ``rspamd`` line in its config),
run as qmail-smtpd runs it: the real script as a subprocess, the message on fd 0 and the envelope
on fd 1, a stand-in for qmail-queue that writes down what it got, and a stand-in for rspamd's
/checkv2 (http.server on 127.0.0.1, a port of its own) answering as told.

- "reject" exits 31 (qmail-smtpd: 554) and "soft reject" 71 (451), nothing queued;
- any other action queues the message with rspamd's X-Spam-Status and X-Spamd-Bar (its CRLF
  folding made LF), or ours from its action and score when it gave none; a sender's own X-Spam
  headers, in any spelling, are gone;
- no verdict (the port closed, an HTTP error, no answer in time, an answer trickling in, the
  connection closed, no JSON): queued all the same, ``X-Spam-Status: Unknown (rspamd did not
  answer: ...)``, within the time allowed;
- the request carries the client's address, its HELO (from qmail-smtpd's Received line), the
  envelope sender, one Rcpt per recipient, a Queue-Id, and the message's exact bytes, a
  message of databytes too, under port 25's memory limit.

Where this machine has Debian's rspamd (and runs the tests as root), a slow test starts it with
qmailhost's config on ports of its own: GTUBE refused (31), a plain message queued with its verdict.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qmailhost.files import path as file_path

FILTER = file_path("dkim/authres.py")
ME = "mail.example.org"
RECEIVED = (b"Received: from unknown (HELO mx.peer.example.net) (203.0.113.5)\n"
            b"  by mail.example.org with SMTP; 7 Dec 2026 07:00:00 -0000\n")
MESSAGE = RECEIVED + (b"X-Spam-Status: No, score=-100\n"  # forged: a sender's own verdict
                      b"From: Carol <carol@peer.example.net>\nTo: alice@example.org\n"
                      b"x-SPAM: nope\nX-Spamd-Bar:\n\t----\nSubject: caf\xc3\xa9\n"
                      b"Date: Mon, 07 Dec 2026 07:00:00 +0000\nMessage-ID: <7@peer.example.net>\n\n"
                      b"X-Spam-Status: this line is the body's, and stays\n.a dot line\n")
ENVELOPE = b"Fcarol@peer.example.net\0Talice@example.org\0Tbob-list@example.org\0\0"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
BUDGET = 1.5  # rspamd-seconds in the tests' config


class FakeRspamd(ThreadingHTTPServer):
    """/checkv2 as told: ANSWER (a dict, sent as JSON), STATUS, or a MODE ("slow", "trickle",
    "close", "garbage"); every request is kept (its headers, every value of each, and its body)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer: dict = {"action": "no action", "score": 0.5}
        self.status, self.mode, self.requests = 200, "", []

    def handle_error(self, request, client_address):
        pass  # the filter hung up on a slow answer: as meant

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/checkv2"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        server = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server.requests.append({"path": self.path, "body": body, "headers": self.headers,
                                "all": {name: self.headers.get_all(name) for name in set(self.headers.keys())}})
        if server.mode == "close":
            self.close_connection = True
            return
        if server.mode == "slow":
            time.sleep(BUDGET + 2)
        if server.mode == "trickle":  # a header line every 0.3 s: no single wait is long
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for n in range(20):
                self.wfile.write(f"X-Wait-{n}: {n}\r\n".encode())
                self.wfile.flush()
                time.sleep(0.3)
            return
        data = b"this is not JSON" if server.mode == "garbage" else json.dumps(server.answer).encode()
        self.send_response(server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def rspamd():
    server = FakeRspamd()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class Installed:
    """The filter as the deploy installs it (its config beside it) and a qmail-queue that keeps what it got."""

    def __init__(self, root: Path, url: str, authserv_id: str | None = None):
        self.root = root
        self.queued, self.envelope = root / "queued.msg", root / "queued.env"
        queue = root / "qmail-queue"
        queue.write_text(f"#!/bin/sh\ncat > {self.queued}\ncat <&1 > {self.envelope}\n")
        queue.chmod(0o755)
        lines = [f"authserv-id {authserv_id}"] if authserv_id else []
        lines += [f"queue {queue}", f"rspamd {url}", f"rspamd-seconds {BUDGET}"]
        (root / "inbound").write_text("\n".join(lines) + "\n")
        self.script = root / "qmail-queue-filter"
        self.script.write_text(f"#!{sys.executable}\n" + FILTER.read_text())
        self.script.chmod(0o755)

    def run(self, message: bytes = MESSAGE, envelope: bytes = ENVELOPE, limits=None, **environ):
        (self.root / "message").write_bytes(message)
        (self.root / "envelope").write_bytes(envelope)
        self.queued.unlink(missing_ok=True)
        env = {"PATH": "/usr/bin:/bin", "TCPREMOTEIP": "203.0.113.5", **environ}
        started = time.monotonic()
        with open(self.root / "message", "rb") as stdin, open(self.root / "envelope", "rb") as fd1:
            run = subprocess.run([str(self.script)], stdin=stdin, stdout=fd1, stderr=subprocess.PIPE, env=env,
                                 cwd=self.root, preexec_fn=limits, timeout=60)
        self.seconds = time.monotonic() - started
        return run

    def message(self) -> bytes | None:
        return self.queued.read_bytes() if self.queued.exists() else None

    def headers(self) -> list[bytes]:
        head = self.message().split(b"\n\n", 1)[0]
        return head.replace(b"\n\t", b"\t").replace(b"\n ", b" ").split(b"\n")


@pytest.fixture
def installed(tmp_path, rspamd):
    return Installed(tmp_path, rspamd.url)


def _spam_headers(headers: list[bytes]) -> list[bytes]:
    return [h for h in headers if h.lower().startswith((b"x-spam-status:", b"x-spamd-bar:", b"x-spam:"))]


def test_reject_is_qmail_queues_permanent_refusal_and_nothing_is_queued(installed, rspamd):
    rspamd.answer = {"action": "reject", "score": 15.0, "is_skipped": True, "symbols": {"GTUBE": {}}, "milter": None}
    run = installed.run(MESSAGE.replace(b".a dot line", GTUBE.encode()))
    assert run.returncode == 31, run.stderr  # qmail-smtpd: "554 mail server permanently rejected message"
    assert installed.message() is None
    assert b"rspamd reject, score 15.00: refused (554)" in run.stderr


def test_soft_reject_is_a_temporary_refusal(installed, rspamd):
    rspamd.answer = {"action": "soft reject", "score": 11.7, "messages": {"smtp_message": "Try again later"}}
    run = installed.run()
    assert run.returncode == 71 and installed.message() is None, run.stderr  # qmail-smtpd: 451


def test_add_header_is_queued_with_rspamds_headers_and_no_forged_one(installed, rspamd):
    rspamd.answer = {"action": "add header", "score": 7.2, "milter": {
        "add_headers": {"X-Spamd-Bar": {"value": "+++++++", "order": -1},
                        "X-Spam-Status": {"value": "Yes, score=7.20\r\n\ttags=BAYES_SPAM", "order": -1}},
        "remove_headers": {"X-Spam-Status": 0, "X-Spam": 0, "X-Spamd-Bar": 0}}}
    run = installed.run()
    assert run.returncode == 0, run.stderr
    queued = installed.message()
    assert queued.startswith(b"X-Spamd-Bar: +++++++\nX-Spam-Status: Yes, score=7.20\n\ttags=BAYES_SPAM\n" + RECEIVED)
    assert b"\r" not in queued
    assert _spam_headers(installed.headers()) == [b"X-Spamd-Bar: +++++++",
                                                  b"X-Spam-Status: Yes, score=7.20\ttags=BAYES_SPAM"]
    assert queued.endswith(b"\n\nX-Spam-Status: this line is the body's, and stays\n.a dot line\n")
    assert b"Subject: caf\xc3\xa9\n" in queued and b"From: Carol <carol@peer.example.net>\n" in queued
    assert installed.envelope.read_bytes() == ENVELOPE
    assert b"rspamd add header, score 7.20" in run.stderr


def test_without_rspamds_headers_the_filter_writes_its_own_status(installed, rspamd):
    rspamd.answer = {"action": "no action", "score": -0.4, "milter": None}
    assert installed.run().returncode == 0
    assert _spam_headers(installed.headers()) == [b"X-Spam-Status: No, score=-0.40"]
    rspamd.answer = {"action": "rewrite subject", "score": 9, "subject": "*** SPAM *** x"}
    assert installed.run().returncode == 0
    assert _spam_headers(installed.headers()) == [b"X-Spam-Status: Yes, score=9.00"]


def test_the_request_carries_the_client_the_envelope_and_the_exact_message(installed, rspamd):
    assert installed.run().returncode == 0
    [request] = rspamd.requests
    assert request["path"] == "/checkv2" and request["body"] == MESSAGE
    headers = request["all"]
    assert headers["IP"] == ["203.0.113.5"] and headers["From"] == ["carol@peer.example.net"]
    assert headers["Rcpt"] == ["alice@example.org", "bob-list@example.org"]
    assert headers["Helo"] == ["mx.peer.example.net"]  # qmail-smtpd's Received line: (HELO ...)
    assert headers["Content-Length"] == [str(len(MESSAGE))]
    assert headers["Queue-Id"][0].startswith("qh") and "Hostname" not in headers  # tcpserver -H: no name


def test_a_bounce_and_a_client_whose_name_tcpserver_knows(installed, rspamd):
    received = b"Received: from mx.peer.example.net (203.0.113.5)\n  by mail.example.org with SMTP; x\n"
    assert installed.run(received + b"Subject: x\n\nbody\n", b"F\0Talice@example.org\0\0",
                         TCPREMOTEHOST="mx.peer.example.net").returncode == 0
    headers = rspamd.requests[-1]["all"]
    assert headers["From"] == ["<>"] and headers["Rcpt"] == ["alice@example.org"]  # the null sender: a bounce
    assert headers["Hostname"] == ["mx.peer.example.net"] and headers["Helo"] == ["mx.peer.example.net"]
    assert installed.run(b"Received: from unknown (203.0.113.5)\n  by x with SMTP; x\n\nbody\n").returncode == 0
    assert "Helo" not in rspamd.requests[-1]["all"]  # no HELO given, no name known


def _closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/checkv2"


@pytest.mark.parametrize(("case", "reason"), [
    ("closed port", "connection refused"),
    ("HTTP 500", "HTTP 500 Internal Server Error"),
    ("slow", f"no answer within {BUDGET:g} s"),
    ("trickle", f"no answer within {BUDGET:g} s"),
    ("close", "it closed the connection"),
    ("garbage", "an answer that is not JSON"),
    ("no action", "an answer without an action"),
])
def test_no_verdict_queues_the_message_marked_unknown(tmp_path, rspamd, case, reason):
    installed = Installed(tmp_path, _closed_port() if case == "closed port" else rspamd.url)
    rspamd.status = 500 if case == "HTTP 500" else 200
    rspamd.mode = case if case in ("slow", "trickle", "close", "garbage") else ""
    rspamd.answer = {"score": 3} if case == "no action" else rspamd.answer
    run = installed.run()
    assert run.returncode == 0, run.stderr
    assert installed.seconds < BUDGET + 1.5, installed.seconds  # the whole exchange is bounded
    assert _spam_headers(installed.headers()) == [f"X-Spam-Status: Unknown (rspamd did not answer: {reason})".encode()]
    assert installed.message().endswith(MESSAGE[len(RECEIVED) + len(b"X-Spam-Status: No, score=-100\n"):]
                                        .split(b"\n\n", 1)[1])
    assert installed.envelope.read_bytes() == ENVELOPE
    assert b"queued unjudged" in run.stderr


def test_authentication_results_and_the_verdict_together(tmp_path, rspamd):
    installed = Installed(tmp_path, rspamd.url, authserv_id=ME)
    forged = f"Authentication-Results: {ME}; dkim=pass header.d=paypal.com\n".encode()
    rspamd.answer = {"action": "no action", "score": 1.0, "milter": {"add_headers": {
        "X-Spam-Status": {"value": "No, score=1.00", "order": -1}}}}
    run = installed.run(RECEIVED + forged + MESSAGE[len(RECEIVED):], TCPREMOTEIP="")  # (no address: no SPF lookup)
    assert run.returncode == 0, run.stderr
    assert installed.message().startswith(b"X-Spam-Status: No, score=1.00\nAuthentication-Results: " + ME.encode()
                                          + b";\n\tdkim=none\n" + RECEIVED)
    assert b"paypal" not in installed.message() and len(_spam_headers(installed.headers())) == 1


def test_a_message_of_databytes_is_posted_whole_under_port_25s_memory_limit(installed, rspamd):
    """19 MB, as qmail-smtpd runs the filter (softlimit -m 64000000): rspamd gets every byte, and
    the message is queued whole behind the verdict's header."""
    message = RECEIVED + b"Subject: big\n\n" + (b"x" * 76 + b"\n") * (19_000_000 // 77)

    def port_25s_limits():
        for limit in (resource.RLIMIT_DATA, resource.RLIMIT_STACK, resource.RLIMIT_MEMLOCK, resource.RLIMIT_AS):
            hard = resource.getrlimit(limit)[1]
            resource.setrlimit(limit, (64_000_000 if hard == resource.RLIM_INFINITY else min(64_000_000, hard), hard))

    run = installed.run(message, limits=port_25s_limits)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert rspamd.requests[-1]["body"] == message
    assert installed.message() == b"X-Spam-Status: No, score=0.50\n" + message


# --- against a real rspamd (when this machine has one: Debian's package), with qmailhost's config ------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not (Path("/usr/bin/rspamd").exists() and Path("/etc/rspamd/rspamd.conf").exists()
                         and os.geteuid() == 0), reason="needs Debian's rspamd package, and root (rspamd -u)")
def test_a_real_rspamd_with_our_config_refuses_gtube_and_answers_a_plain_message(tmp_path):
    """rspamd (Debian's), started as the run script starts it, from a copy of /etc/rspamd with our
    local.d/ on ports of its own: the standard GTUBE is refused (31); a plain message is queued
    with its X-Spam-Status; the controller refuses a request without its password."""
    import shutil
    import tempfile
    import urllib.error
    import urllib.request

    from qmailhost.platform import debian
    from qmailhost.settings import Settings
    from tasks import spam

    release = "12" if Path("/etc/debian_version").read_text().startswith("12") else "13"
    root = Path(tempfile.mkdtemp(prefix="qmailhost-rspamd-"))  # (workers, as _rspamd, must reach it)
    normal, controller = _free_port(), _free_port()
    rspamd_process = None
    try:
        root.chmod(0o755)
        shutil.copytree("/etc/rspamd", root / "etc")
        for name in ("db", "run", "log"):
            (root / name).mkdir()
            shutil.chown(root / name, "_rspamd", "_rspamd")
        mine = {"dir": str(root), "password": str(root / "controller.password"), "include": str(root / "controller.inc")}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(spam, "NORMAL_PORT", normal)
            patch.setattr(spam, "CONTROLLER_PORT", controller)
            patch.setattr(spam, "files", lambda platform: mine)
            settings = Settings({"spam_filter": True, "spam_reject_score": 15, "spam_junk_score": 6,
                                 "dmarc_enforce": True})
            for name, content in spam.local_d(debian(release), settings).items():
                (root / "etc/local.d" / name).write_text(content)
            subprocess.run(["sh", "-c", spam.password_command(debian(release))], check=True)
        variables = [f"--var={k}={root / v}" for k, v in (("CONFDIR", "etc"), ("LOCAL_CONFDIR", "etc"),
                                                          ("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log"))]
        test = subprocess.run(["rspamadm", *variables, "configtest", "-c", str(root / "etc/rspamd.conf")],
                              capture_output=True, text=True)
        assert test.returncode == 0 and "syntax OK" in test.stdout, test.stdout + test.stderr
        rspamd_process = subprocess.Popen(["rspamd", *variables, "-f", "-u", "_rspamd", "-g", "_rspamd", "-c",
                                           str(root / "etc/rspamd.conf")], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        for _ in range(120):  # the first start compiles its expressions: seconds
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{normal}/ping", timeout=1) as answer:
                    if answer.read().strip() == b"pong":
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("rspamd did not answer /ping within a minute")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{controller}/stat", timeout=5)
        assert refused.value.code in (401, 403)
        installed = Installed(tmp_path, f"http://127.0.0.1:{normal}/checkv2")
        (tmp_path / "inbound").write_text((tmp_path / "inbound").read_text().replace(f"{BUDGET}", "20"))
        run = installed.run(MESSAGE.replace(b".a dot line", GTUBE.encode()))
        assert run.returncode == 31 and installed.message() is None, run.stderr
        run = installed.run()
        assert run.returncode == 0, run.stderr
        status = [h for h in _spam_headers(installed.headers()) if h.startswith(b"X-Spam-Status:")]
        assert len(status) == 1 and status[0].startswith((b"X-Spam-Status: No, score=",
                                                          b"X-Spam-Status: Yes, score=")), status
    finally:
        if rspamd_process:
            rspamd_process.terminate()
            rspamd_process.wait(30)
        shutil.rmtree(root, ignore_errors=True)
