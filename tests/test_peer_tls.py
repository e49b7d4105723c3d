"""TLS between qmailhost and a real MTA nobody here wrote: Debian's Postfix in a second
throwaway host (harness/peer.py), each reaching the other through a relay on its own
gateway, qmail-remote finding the peer by MX from a test DNS server that the host's
unbound forwards to. Postfix sends to port 25 with TLS required; qmail-remote sends to
Postfix over TLS; a peer whose TLS is broken gets nothing in plaintext until it is in
notlshosts; a peer in tlshosts must show a certificate from the CA given."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid

import pytest

from harness import images, sandbox
from harness.dns_server import DnsServer
from harness.mail import wait_for_delivery
from harness.peer import CERT_FILE, PostfixPeer, link
from harness.pyinfra_cli import pyinfra
from tasks.health import SETTINGS_COPY

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN
PEER_DOMAIN, PEER_MX = "peer.example.net", "mx.peer.example.net"  # .test is unbound's own (RFC 6761)
TLS_RECEIVED = re.compile(r"\(using (TLSv1\.[23]) with cipher (\S+) .*?by " + re.escape(PEER_MX)
                          + r" \(Postfix\) with ESMTPS", re.DOTALL)


@pytest.fixture(scope="module")
def pair(sandbox_ready, sources):
    """(qmailhost host, its deploy data, the Postfix peer), linked both ways."""
    host = images.create(f"t{os.getpid()}-qmail")
    peer_host = sandbox.create(f"t{os.getpid()}-postfix")
    dns = DnsServer({(PEER_DOMAIN, "MX"): [PEER_MX], (PEER_MX, "A"): [host.gateway]}, address=host.gateway)
    relays = None
    try:
        relays = link(host, peer_host)
        peer = PostfixPeer(peer_host, domain=PEER_DOMAIN, hostname=PEER_MX)
        peer.install()
        data = {"dns_forwarders": [f"{host.gateway}@{dns.port}"]}
        pyinfra(host, data=data)
        yield host, data, peer
    finally:
        if relays:
            relays.close()
        dns.close()
        sandbox.destroy(peer_host.name)
        sandbox.destroy(host.name)


def inject(host: sandbox.Host, recipient: str, subject: str) -> None:
    """A message from alice, queued on the host as her mail client's would be (qmail-inject)."""
    host.ssh(f"printf 'From: {USER}@{DOMAIN}\\nTo: {recipient}\\nSubject: {subject}\\n\\nline one\\n.dot line\\n'"
             f" | /var/qmail/bin/qmail-inject -f {USER}@{DOMAIN} {recipient}")


def queued(host: sandbox.Host) -> int:
    return int(host.ssh("/var/qmail/bin/qmail-qstat | sed -n 's/^messages in queue: //p'").stdout.strip())


def retry_now(host: sandbox.Host) -> None:
    """What a qmail admin does after fixing a route: qmail-send retries the queue now (ALRM)."""
    host.ssh("svc -a /etc/service/qmail-send")


def deploy_predicted(host: sandbox.Host, data: dict) -> list[str]:
    dry = pyinfra(host, "--dry", data=data)
    real = pyinfra(host, data=data)
    assert sorted(real.changed()) == sorted(dry.planned())
    assert pyinfra(host, data=data).changed() == []
    return sorted(real.changed())


def test_postfix_sends_to_port_25_with_tls_required(pair):
    host, _, peer = pair
    peer.require_tls_outbound()
    subject = f"from postfix {uuid.uuid4().hex}"
    peer.send(f"carol@{PEER_DOMAIN}", f"{USER}@{DOMAIN}", subject)
    wait_for_delivery(host, USER, subject, timeout=60)
    established = re.findall(r"TLS connection established to \S+: (TLSv1\.[23]) with cipher (\S+)", peer.log())
    assert established, peer.log()[-2000:]
    assert established[-1][0] in ("TLSv1.2", "TLSv1.3")


def test_qmail_remote_sends_to_postfix_over_tls(pair):
    host, _, peer = pair
    subject = f"to postfix {uuid.uuid4().hex}"
    inject(host, f"bob@{PEER_DOMAIN}", subject)
    received = peer.wait_for_message(subject, timeout=60)
    match = TLS_RECEIVED.search(received)
    assert match, received[:2000]
    assert match.group(1) == "TLSv1.3"
    assert "\n.dot line" in received  # the dot-stuffed line arrived as written


def test_broken_peer_tls_waits_in_the_queue_until_notlshosts(pair):
    host, data, peer = pair
    peer.break_tls()
    try:
        subject = f"broken tls {uuid.uuid4().hex}"
        inject(host, f"bob@{PEER_DOMAIN}", subject)
        deadline, deferral = time.monotonic() + 30, ""
        while time.monotonic() < deadline and not deferral:
            time.sleep(1)
            deferral = host.ssh("grep -a 'deferral' /var/log/qmail/qmail-send/current | tail -1").stdout
        assert "TLS" in deferral, deferral  # qmail-remote's temporary failure names the handshake
        retry_now(host)
        time.sleep(5)
        assert peer.find_message(subject) is None  # never sent in plaintext
        assert queued(host) >= 1
        changed = deploy_predicted(host, {**data, "notlshosts": [PEER_MX]})
        assert changed == ["Outbound TLS: no TLS to " + PEER_MX, SETTINGS_COPY]
        assert host.ssh(f"test -f /var/qmail/control/notlshosts/{PEER_MX}", check=False).returncode == 0
        retry_now(host)
        received = peer.wait_for_message(subject, timeout=60)
        assert "with ESMTP id" in received and "(using TLS" not in received, received[:2000]
        assert queued(host) == 0
    finally:
        peer.fix_tls()
    changed = deploy_predicted(host, data)
    assert changed == [f"Outbound TLS: forget {PEER_MX} (not in the inventory)", SETTINGS_COPY]


def test_tlshosts_requires_the_peer_certificate_from_the_given_ca(pair, tmp_path):
    host, data, peer = pair
    right = tmp_path / "peer-ca.pem"
    right.write_text(peer.ssh(f"cat {CERT_FILE}").stdout)  # self-signed: its own CA
    wrong = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={PEER_MX}", "-keyout", str(tmp_path / "other.key"), "-out", str(wrong)],
                   check=True, capture_output=True)
    changed = deploy_predicted(host, {**data, "tlshosts": {PEER_MX: str(wrong)}})
    assert changed == [f"Outbound TLS: verify {PEER_MX}'s certificate", SETTINGS_COPY]
    subject = f"verified tls {uuid.uuid4().hex}"
    inject(host, f"bob@{PEER_DOMAIN}", subject)
    time.sleep(8)
    assert peer.find_message(subject) is None  # a certificate from another CA: it waits
    assert queued(host) >= 1
    deploy_predicted(host, {**data, "tlshosts": {PEER_MX: str(right)}})
    retry_now(host)
    received = peer.wait_for_message(subject, timeout=60)
    assert TLS_RECEIVED.search(received), received[:2000]
    deploy_predicted(host, data)
    assert host.ssh("ls /var/qmail/control/tlshosts").stdout.strip() == ""
