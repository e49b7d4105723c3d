"""Spam judged at SMTP time (tasks/spam.py), end to end, as a stranger meets it: swaks on port
25 from the laptop's side of the veth, rspamd and Redis running under the host's supervision,
the host's unbound forwarding to a name server of this test (the senders' SPF and DMARC).

GTUBE is refused at the final dot (554) and never stored; a clean message is delivered with
rspamd's X-Spam-Status and no forged one; a From: in a domain publishing p=reject, failing
SPF and unsigned, is refused, and under p=quarantine it is delivered marked as spam; with
rspamd stopped, mail is delivered marked Unknown (never lost); the controller and Redis
are closed from outside, the check says rspamd answers, and a second deploy changes nothing."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from harness import images, sandbox
from harness.dns_server import DnsServer
from harness.mail import wait_for_delivery
from harness.pyinfra_cli import pyinfra
from tests.test_verify import verify

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
REJECTING, QUARANTINING = "forged-bank.net", "quarantine-bank.net"  # only this test's DNS knows them


def zone(gateway: str):
    """The senders' DNS. sender.example is a well-kept sender: its MX is the laptop's side of the
    veth (where swaks connects from), with an address, a PTR back and SPF allowing it. The two
    banks allow no sender (SPF -all) and publish DMARC."""
    reverse = ".".join(reversed(gateway.split("."))) + ".in-addr.arpa"
    records = {("sender.example", "MX"): ["mx.sender.example"], ("sender.example", "A"): [gateway],
               ("mx.sender.example", "A"): [gateway], (reverse, "PTR"): ["mx.sender.example"],
               ("sender.example", "TXT"): [[f"v=spf1 ip4:{gateway} -all"]],
               ("_dmarc.sender.example", "TXT"): [["v=DMARC1; p=none"]]}
    for domain, policy in {REJECTING: "reject", QUARANTINING: "quarantine"}.items():
        records[(domain, "TXT")] = [["v=spf1 -all"]]
        records[(f"_dmarc.{domain}", "TXT")] = [[f"v=DMARC1; p={policy}"]]
    return lambda name, kind: records.get((name, kind), [])


@pytest.fixture(scope="module")
def world(sandbox_ready, sources):
    host = images.create(f"t{os.getpid()}-spam")
    dns = DnsServer(zone(host.gateway), address=host.gateway)
    try:
        data = {"spam_filter": True, "dns_forwarders": [f"{host.gateway}@{dns.port}"], "verify_after_deploy": False}
        pyinfra(host, data=data)
        rspamd_answers(host)  # its first start compiles its patterns (about 10 s): until then, mail is marked Unknown
        yield {"host": host, "data": data, "dns": dns}
    finally:
        dns.close()
        sandbox.destroy(host.name)


PING = ("python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:11333/ping', "
        "timeout=2).read().decode())\"")


def rspamd_answers(host: sandbox.Host, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while "pong" not in host.ssh(PING, check=False).stdout:
        assert time.monotonic() < deadline, f"rspamd did not answer within {timeout} s"
        time.sleep(1)


def send_25(host: sandbox.Host, sender: str, subject: str, body: str = "A test message.",
            headers: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """One message into port 25 as a stranger sends it (swaks: EHLO, STARTTLS offered but not
    taken, MAIL FROM SENDER, the From: header SENDER)."""
    argv = ["swaks", "--server", host.address, "--port", "25", "--ehlo", "mx.sender.example",
            "--from", sender, "--to", f"{USER}@{DOMAIN}", "--header", f"From: {sender}",
            "--header", f"Subject: {subject}", *[a for h in headers for a in ("--header", h)],
            "--body", body, "--timeout", "60"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def stored(host: sandbox.Host, subject: str) -> bool:
    return bool(host.ssh(f"grep -l -F 'Subject: {subject}' /home/{USER}/Maildir/new/* 2>/dev/null; true").stdout.strip())


def headers_of(host: sandbox.Host, path: str) -> str:
    return host.ssh(f"sed '/^$/q' {path}").stdout


def test_gtube_is_refused_at_the_final_dot_and_never_stored(world):
    host, subject = world["host"], f"gtube {uuid.uuid4().hex}"
    sent = send_25(host, "someone@sender.example", subject, body=GTUBE)
    assert sent.returncode != 0 and "<** 554" in sent.stdout, sent.stdout[-1500:]
    assert not stored(host, subject)
    assert "spam:" not in host.ssh("/var/qmail/bin/qmail-qread").stdout


def test_clean_mail_is_delivered_with_rspamds_verdict_and_no_forged_one(world):
    host, subject = world["host"], f"clean {uuid.uuid4().hex}"
    sent = send_25(host, "someone@sender.example", subject, headers=("X-Spam-Status: No, forged by the sender",))
    assert sent.returncode == 0, sent.stdout[-1500:]
    top = headers_of(host, wait_for_delivery(host, USER, subject))
    statuses = [line for line in top.splitlines() if line.lower().startswith("x-spam-status:")]
    assert len(statuses) == 1 and "forged by the sender" not in statuses[0], top
    assert statuses[0].split(":", 1)[1].strip().startswith("No, score="), top


def test_a_from_in_a_reject_domain_failing_dmarc_is_refused(world):
    host, subject = world["host"], f"forged {uuid.uuid4().hex}"
    sent = send_25(host, f"ceo@{REJECTING}", subject)
    assert sent.returncode != 0 and "<** 554" in sent.stdout, sent.stdout[-1500:]
    assert not stored(host, subject)
    assert (f"_dmarc.{REJECTING}", "TXT") in world["dns"].asked, "rspamd asked the sender's DMARC policy"


def test_a_from_in_a_quarantine_domain_failing_dmarc_is_delivered_marked_spam(world):
    host, subject = world["host"], f"quarantined {uuid.uuid4().hex}"
    sent = send_25(host, f"billing@{QUARANTINING}", subject)
    assert sent.returncode == 0, sent.stdout[-1500:]
    top = headers_of(host, wait_for_delivery(host, USER, subject))
    assert "X-Spam-Status: Yes" in top, top


def test_the_controller_and_redis_are_closed_and_the_check_says_rspamd_answers(world):
    host = world["host"]
    checked = verify(host, **world["data"])
    assert checked.results["loopback_ports_closed"][0] == "ok", checked.results["loopback_ports_closed"]
    assert "11334" in checked.results["loopback_ports_closed"][1] and "6379" in checked.results["loopback_ports_closed"][1]
    status, reason = checked.results["spam_filter"]
    assert status == "ok" and "the controller wants its password" in reason, reason
    assert "redis" in checked.results["services_up"][1] and "rspamd" in checked.results["services_up"][1]
    assert pyinfra(host, data=world["data"]).changed() == []


def test_with_rspamd_stopped_mail_is_delivered_marked_unknown(world):
    host, subject = world["host"], f"unjudged {uuid.uuid4().hex}"
    host.ssh("svc -d /etc/service/rspamd && sleep 1")
    try:
        sent = send_25(host, "someone@sender.example", subject)
        assert sent.returncode == 0, sent.stdout[-1500:]
        top = headers_of(host, wait_for_delivery(host, USER, subject))
        assert "X-Spam-Status: Unknown (rspamd did not answer" in top, top
    finally:
        host.ssh("svc -u /etc/service/rspamd")
        rspamd_answers(host)
