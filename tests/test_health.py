"""Scheduled health (tasks/health.py), checked the way its owner meets it: alerts and heartbeats
arriving at a plain HTTP receiver on the laptop's side of the host's veth, sent by the host's
own Apprise (json://) and its own runs, with nobody running anything.

The host runs the status checks every minute (health_every: 1m): a heartbeat arrives after
each run with the run's worst status, and verify.py shows the last scheduled run beside its
own table. A service stopped by hand: one alert naming it (a run later: no second one), and
"resolved" after the next deploy. A filesystem that fills (a small tmpfs over the account's
home): disk_space alerts, and resolves when it has room again. With the scheduler stopped
the heartbeats stop, and verify.py's health_runs says the scheduler has stopped (slow: it
waits out twice health_every). No alert URL or heartbeat URL is in any output.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness import images, sandbox
from harness.pyinfra_cli import pyinfra

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
PORT = 18090  # the receiver's, on the host's gateway (the laptop's side of its veth)
RUN = "/etc/qmailhost/health/run"
LAST = "/var/lib/qmailhost/health/last.json"


class Receiver:
    """What an alerting service and a dead-man's switch would get: every POST, path and JSON body."""

    def __init__(self, address: str):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append({"path": self.path, "time": time.time(), "body": json.loads(body or b"{}"),
                                 "agent": self.headers.get("User-Agent", "")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((address, PORT), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict]:
        return [r for r in self.received if r["path"].startswith("/alerts/")]

    def beats(self) -> list[dict]:
        return [r for r in self.received if r["path"].startswith("/beat/")]

    def wait(self, what, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = what()
            if len(found) >= count:
                return found
            time.sleep(0.5)
        raise AssertionError(f"{count} expected within {timeout} s, got {what()}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _secret_file(directory, text: str) -> str:
    path = directory / f"url-{uuid.uuid4().hex[:8]}"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def world(sandbox_ready, sources, tmp_path_factory):
    host = images.create(f"t{os.getpid()}-health")
    receiver = Receiver(host.gateway)
    try:
        token = uuid.uuid4().hex
        directory = tmp_path_factory.mktemp("health")
        data = {"health_every": "1m", "verify_after_deploy": False,
                "alert_urls": {"file": _secret_file(directory, f"json://{host.gateway}:{PORT}/alerts/{token}")},
                "heartbeat_url": {"file": _secret_file(directory, f"http://{host.gateway}:{PORT}/beat/{token}/{{status}}")}}
        deploy = pyinfra(host, data=data, json_output=False)
        assert token not in deploy.output
        yield {"host": host, "data": data, "receiver": receiver, "token": token}
    finally:
        receiver.close()
        sandbox.destroy(host.name)


def _run_now(host) -> dict:
    """One run now, as the scheduler starts it (the runner, without --if-due); its record."""
    host.ssh(RUN)
    return json.loads(host.ssh(f"cat {LAST}").stdout)


def test_every_scheduled_run_sends_a_heartbeat_and_verify_shows_the_last_run(world):
    host, receiver = world["host"], world["receiver"]
    beats = receiver.wait(receiver.beats, 1, timeout=200)  # nobody runs anything: the scheduler does
    assert beats[0]["path"].startswith(f"/beat/{world['token']}/") and beats[0]["agent"] == "qmailhost"
    assert beats[0]["path"].rsplit("/", 1)[1] == beats[0]["body"]["status"] in ("ok", "warning", "error")
    assert beats[0]["body"]["host"] == sandbox.SANDBOX_HOSTNAME and sum(beats[0]["body"]["checks"].values()) > 15
    last = json.loads(host.ssh(f"cat {LAST}").stdout)
    by_name = {r["name"]: r for r in last["results"]}
    assert by_name["services_up"]["status"] == "ok" and by_name["disk_space"]["status"] == "ok"
    assert by_name["submission_starttls_first"]["status"] in ("ok", "skipped")
    assert by_name["imap_login"]["status"] == "skipped"  # it logs in from the laptop only
    # A healthy host's own run finds no error (Dovecot offered LOGIN to the host's own address,
    # which it counts as secure: imap_no_cleartext_login failed there on every run)
    assert not [r for r in last["results"] if r["status"] == "error"], last["results"]
    assert host.ssh("stat -c '%a %U' /etc/qmailhost/health /etc/qmailhost/health/alerts "
                    "/etc/qmailhost/health/heartbeat").stdout.split() == ["700", "root", "600", "root", "600", "root"]
    verify = pyinfra(host, deploy="verify.py", data=world["data"], json_output=False, check=False)
    assert "The host's scheduled checks (last run" in verify.output, verify.output[-3000:]
    row = next(line for line in verify.output.splitlines() if line.strip().startswith("health_runs"))
    assert " ok " in row and "last run" in row, row
    scheduled = [line for line in verify.output.splitlines() if "on host | " in line]
    assert any(line.split("on host | ")[1].startswith("services_up ") and " ok " in line for line in scheduled)
    assert world["token"] not in verify.output


def test_a_stopped_service_alerts_once_and_resolved_follows_the_next_deploy(world):
    host, receiver = world["host"], world["receiver"]
    before = len(receiver.alerts())
    host.ssh("svc -d /etc/service/stunnel")
    alert = receiver.wait(receiver.alerts, before + 1, timeout=200)[-1]  # the scheduler's next run
    text = alert["body"]["title"] + "\n" + alert["body"]["message"]
    assert sandbox.SANDBOX_HOSTNAME in alert["body"]["title"] and "services_up: error" in text and "stunnel" in text
    assert alert["body"]["type"] == "failure"
    _run_now(host)
    time.sleep(2)
    assert len(receiver.alerts()) == before + 1, "told once, not once per run"
    pyinfra(host, data=world["data"], json_output=False)  # the host is what the files say: stunnel up
    record = _run_now(host)
    resolved = receiver.wait(receiver.alerts, before + 2, timeout=30)[-1]
    assert "services_up: resolved" in resolved["body"]["message"] and resolved["body"]["type"] == "success"
    assert record["alerts"] == "sent"
    events = host.ssh("cat /var/lib/qmailhost/health/events.log").stdout
    assert '"name": "services_up", "from": "ok", "to": "error"' in events
    assert '"name": "services_up", "from": "error", "to": "ok"' in events


def test_a_filling_filesystem_alerts_and_resolves_with_room_again(world):
    host, receiver = world["host"], world["receiver"]
    before = len(receiver.alerts())
    host.ssh("cp -a /home/alice /root/alice.kept && mount -t tmpfs -o size=2m,mode=755 tmpfs /home/alice && "
             "cp -a /root/alice.kept/. /home/alice/ && "
             "dd if=/dev/zero of=/home/alice/filler bs=1k count=4096 2>/dev/null; true")
    try:
        record = _run_now(host)
        disk = next(r for r in record["results"] if r["name"] == "disk_space")
        assert disk["status"] == "error" and "/home/alice" in disk["reason"] and "free" in disk["reason"], disk
        alert = receiver.wait(receiver.alerts, before + 1, timeout=30)[-1]
        assert "disk_space: error" in alert["body"]["message"] and "/home/alice" in alert["body"]["message"]
    finally:
        host.ssh("umount /home/alice && rm -rf /root/alice.kept")
    _run_now(host)
    resolved = receiver.wait(receiver.alerts, before + 2, timeout=30)[-1]
    assert "disk_space: resolved" in resolved["body"]["message"]


@pytest.mark.slow  # 3 min: waits out twice health_every
def test_with_the_scheduler_stopped_the_heartbeats_stop_and_verify_says_so(world):
    host, receiver = world["host"], world["receiver"]
    beats = receiver.wait(receiver.beats, len(receiver.beats()) + 2, timeout=270)  # the scheduler's own
    assert 50 < beats[-1]["time"] - beats[-2]["time"] < 130, "one run a minute"
    host.ssh("svc -d /etc/service/qmailhost-health")
    time.sleep(5)
    stopped = len(receiver.beats())
    time.sleep(190)
    assert len(receiver.beats()) == stopped, "a heartbeat without the scheduler"
    verify = pyinfra(host, deploy="verify.py", data=world["data"], json_output=False, check=False)
    row = next(line for line in verify.output.splitlines() if line.strip().startswith("health_runs"))
    assert " error " in row and "the scheduler has stopped" in row, row
    assert verify.returncode != 0
    pyinfra(host, data=world["data"], json_output=False)  # the deploy starts it again
    receiver.wait(receiver.beats, stopped + 1, timeout=200)


def test_a_replaced_library_restarts_the_services_that_run_it_and_the_check_is_clean_again(world):
    """An update replaces libssl under running daemons (simulated as dpkg does it: the new file
    renamed over the old, which stays mapped, deleted): the updates check names them, apt's
    hook (restart-stale, as dpkg's Post-Invoke runs it) gives each one `svc -t`, and the next
    run is clean of them."""
    host = world["host"]
    library = host.ssh("readlink -f $(ldconfig -p | awk '/libssl.so.3 .*x86-64/ {print $NF; exit}')").stdout.strip()
    assert library.startswith("/usr/lib/"), library
    before = host.service_pids()
    host.ssh(f"cp -p {library} {library}.new && mv -f {library}.new {library}")
    stale = host.ssh("/etc/qmailhost/updates/restart-stale --list").stdout
    assert "service\tstunnel\t" in stale and "libssl.so.3" in stale, stale
    record = _run_now(host)
    updates = next(r for r in record["results"] if r["name"] == "updates")
    assert updates["status"] == "warning" and "stunnel" in updates["reason"] and "replaced library" in updates["reason"]
    restarted = host.ssh("sh -c 'if [ -x /etc/qmailhost/updates/restart-stale ]; then "
                         "/etc/qmailhost/updates/restart-stale || true; fi'").stdout  # the hook's own words
    assert "stunnel" in restarted, restarted
    time.sleep(2)
    after = host.service_pids()
    assert after["/etc/service/stunnel"] != before["/etc/service/stunnel"], "stunnel restarted"
    assert after["/etc/service/qmail-send"] == before["/etc/service/qmail-send"], "qmail-send maps no libssl"
    assert host.ssh("/etc/qmailhost/updates/restart-stale --list").stdout.count("service\t") == 0
    record = _run_now(host)
    updates = next(r for r in record["results"] if r["name"] == "updates")
    # no service of ours is named any more (other processes, such as the harness's sshd, may be)
    assert "stunnel" not in updates["reason"] and "still run" not in updates["reason"].split(" other process")[0], \
        updates
    services_up = next(r for r in record["results"] if r["name"] == "services_up")
    assert services_up["status"] == "ok", services_up
