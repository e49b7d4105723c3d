"""DKIM and the DNS records, end to end, checked by parts nobody here wrote: mail submitted on
587 and 465 (smtplib, as mail clients do) leaves through qmail-remote to Debian's Postfix in
a second throwaway host, where dkimpy's ``dkimverify`` checks the signature against the
records ``records.py`` printed (parsed by dnspython's zone parser, served by a test DNS
server that the peer's resolv.conf names). A message with a line starting with a dot, a
long line and 8-bit text, in every submission mode. Without its key a message waits in the
queue and leaves signed once the key is back. Port 25 adds Authentication-Results. The
printed records make every DNS check ok; one record removed fails exactly its check. A
rotation publishes old and new side by side. After the disk-failure drill the DKIM key in
DNS still verifies new mail."""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from harness import images, sandbox
from harness.dns_server import DnsServer, zone_from_text
from harness.mail import tls_context, wait_for_delivery
from harness.peer import PostfixPeer, link
from harness.pyinfra_cli import predicted_and_real, pyinfra
from qmailhost import checks
from qmailhost.platform import debian
from tasks.dns import txt_strings as dns_txt_strings
from tasks.health import SETTINGS_COPY

pytest.importorskip("dns.zone", reason="dnspython is not installed (the test extra installs it)")
dkim = pytest.importorskip("dkim", reason="dkimpy is not installed (the test extra installs it)")

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN, HOSTNAME = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN, sandbox.SANDBOX_HOSTNAME
PEER_DOMAIN, PEER_MX = "peer.example.net", "mx.peer.example.net"
KEY = f"/etc/qmailhost/dkim/keys/{DOMAIN}/mail.key"
ROW = re.compile(r"^\s*(?P<name>[a-z_]+)\s+(?P<status>ok|warning|error|skipped)\s+(?P<reason>.*)$")
DNS_CHECKS = ("dns_mx", "dns_address", "dns_ptr", "dns_spf", "dns_dkim", "dns_dmarc", "dns_tlsrpt", "dns_srv")
BACKUP_DISK = "/srv/backup-disk"  # the drill's repository: a second disk that outlives the host
FIGURES = Path(os.environ.get("QMAILHOST_FIGURES", "/tmp/qmailhost-figures.txt"))


def _figure(line: str) -> None:
    with FIGURES.open("a") as figures:
        figures.write(f"test_dkim: {line}\n")


class World:
    """The qmailhost host, the Postfix peer, the relays between them, and the DNS they ask."""

    def __init__(self, host: sandbox.Host, peer_host: sandbox.Host):
        self.host, self.peer_host = host, peer_host
        self.zone: dict = {(".", "NS"): ["a.root-servers.net"]}
        self.servers: list[DnsServer] = []
        self.relays = None
        self.peer = PostfixPeer(peer_host, domain=PEER_DOMAIN, hostname=PEER_MX)
        self.peer_dns = self.serve(peer_host.gateway, port=53)  # the peer's resolv.conf names it
        self.laptop_dns = self.serve("127.0.0.1")  # verify.py's dns_server

    def serve(self, address: str, port: int = 0) -> DnsServer:
        server = DnsServer(self.zone, address=address, port=port)
        self.servers.append(server)
        return server

    def attach(self, host: sandbox.Host) -> dict:
        """HOST linked to the peer, its unbound forwarding to the test DNS; its deploy data."""
        if self.relays:
            self.relays.close()
        self.host, self.relays = host, link(host, self.peer_host)
        forwarder = self.serve(host.gateway)
        self.zone[(PEER_DOMAIN, "MX")], self.zone[(PEER_MX, "A")] = [PEER_MX], [host.gateway]
        return {"dns_forwarders": [f"{host.gateway}@{forwarder.port}"]}

    def publish(self, zone_text: str) -> list[tuple[str, str]]:
        """Serve the printed records (as a name server loaded with that zone would)."""
        records = zone_from_text(zone_text)
        assert all(len(s) <= 255 for (_, kind), values in records.items() if kind == "TXT" for v in values for s in v)
        self.zone.update(records)
        return list(records)

    def close(self) -> None:
        if self.relays:
            self.relays.close()
        for server in self.servers:
            server.close()


@pytest.fixture(scope="module")
def world(sandbox_ready, sources, tmp_path_factory):
    host = images.create(f"t{os.getpid()}-dkim")
    peer_host = sandbox.create(f"t{os.getpid()}-dkim-peer")
    world = None
    try:
        world = World(host, peer_host)
        backups = {"backup_dir": str(tmp_path_factory.mktemp("backups"))}  # never the laptop's own
        data = {**world.attach(host), **backups}
        world.peer.install()
        peer_host.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-dkim "
                      f">/tmp/apt-dkim.log 2>&1 && echo 'nameserver {peer_host.gateway}' > /etc/resolv.conf",
                      timeout=600)
        started = time.monotonic()
        pyinfra(host, data=data)
        _figure(f"deploy with DKIM over the deployed image (harness/images.py): "
                f"{time.monotonic() - started:.0f} s")
        world.data = data
        yield world
    finally:
        if world:
            world.close()
        sandbox.destroy(peer_host.name)
        sandbox.destroy(world.host.name if world else host.name)


def records(world: World, data: dict | None = None) -> str:
    return pyinfra(world.host, deploy="records.py", data=data or world.data, json_output=False).stdout


def submit_raw(host: sandbox.Host, raw: bytes, recipient: str, port: int = 587) -> None:
    """RAW as a mail client sends it: TLS (STARTTLS on 587, from the first byte on 465), AUTH
    with what the EHLO offers (smtplib's login()), then the message's bytes, 8-bit as they are."""
    implicit = port == 465
    client = (smtplib.SMTP_SSL(host.address, port, timeout=30, context=tls_context()) if implicit
              else smtplib.SMTP(host.address, port, timeout=30))
    with client:
        client.ehlo("laptop.test")
        if not implicit:
            client.starttls(context=tls_context())
            client.ehlo("laptop.test")
        client.login(USER, sandbox.sandbox_password())
        client.sendmail(f"{USER}@{DOMAIN}", [recipient], raw)


def awkward_message(subject: str) -> bytes:
    return (f"From: Alice <{USER}@{DOMAIN}>\r\nTo: bob@{PEER_DOMAIN}\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "line one\r\n.a line starting with a dot\r\n..two dots\r\n" + "long " * 190 + "end\r\n"
            "8-bit: Grüße, café, 日本語\r\n").encode()


def peer_verifies(world: World, subject: str, timeout: float = 60) -> tuple[str, str]:
    """(dkimverify's verdict on the peer, the message as Postfix delivered it)."""
    received = world.peer.wait_for_message(subject, timeout=timeout)
    home = world.peer.ssh(f"getent passwd {world.peer.user} | cut -d: -f6").stdout.strip()
    path = world.peer.ssh(f"grep -l -F 'Subject: {subject}' {home}/Maildir/new/*").stdout.split()[0]
    verdict = world.peer.ssh(f"dkimverify < {path} 2>&1; true").stdout.strip()
    return verdict, received


def verify_results(world: World, **data) -> dict:
    run = pyinfra(world.host, deploy="verify.py", json_output=False, check=False, timeout=300,
                  data={**world.data, "dns_server": f"127.0.0.1@{world.laptop_dns.port}", **data})
    names = {checks.check_name(c) for c in checks.all_checks(debian("13"))}
    return {m["name"]: (m["status"], m["reason"]) for line in run.stderr.splitlines()
            if (m := ROW.match(line)) and m["name"] in names}


def test_the_printed_records_make_every_dns_check_ok_and_a_removed_one_fails_its_check(world):
    text = records(world)
    assert "(no key on the host yet)" not in text
    published = world.publish(text)
    assert {kind for _, kind in published} >= {"MX", "A", "TXT", "SRV"}
    dkim_txt = world.zone[(f"mail._domainkey.{DOMAIN}", "TXT")]
    assert len(dkim_txt) == 1 and len(dkim_txt[0]) >= 2  # one record, split into strings of <= 255
    assert "".join(dkim_txt[0]).startswith("v=DKIM1; k=rsa; p=")
    reverse = ".".join(reversed(world.host.address.split("."))) + ".in-addr.arpa"
    world.zone[(reverse, "PTR")] = [HOSTNAME]
    results = verify_results(world)
    assert {name: results[name][0] for name in DNS_CHECKS} == dict.fromkeys(DNS_CHECKS, "ok"), results
    for (name, kind), check in (((f"_dmarc.{DOMAIN}", "TXT"), "dns_dmarc"),
                                ((f"mail._domainkey.{DOMAIN}", "TXT"), "dns_dkim"),
                                ((f"_submission._tcp.{DOMAIN}", "SRV"), "dns_srv")):
        kept = world.zone.pop((name, kind))
        try:
            results = verify_results(world)
        finally:
            world.zone[(name, kind)] = kept
        failing = {n: results[n] for n in DNS_CHECKS if results[n][0] != "ok"}
        assert list(failing) == [check] and name in failing[check][1], failing
    # a DKIM record that publishes another key is named as different
    world.zone[(f"mail._domainkey.{DOMAIN}", "TXT")] = [["v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKC"]]
    try:
        assert verify_results(world)["dns_dkim"][0] == "error"
    finally:
        world.zone[(f"mail._domainkey.{DOMAIN}", "TXT")] = dkim_txt
    assert world.host.ssh("stat -c '%a %U' " + KEY).stdout.split() == ["400", "qmailr"]
    assert world.host.ssh(f"su -s /bin/sh nobody -c 'cat {KEY}'", check=False).returncode != 0


@pytest.mark.parametrize("mode", ["ofmipd", "spamdyke"])
def test_mail_submitted_on_587_and_465_is_signed_and_the_peer_verifies_it(world, mode):
    data = {**world.data, "submission": mode}
    if mode != "ofmipd":
        pyinfra(world.host, data=data)
    for port in (587, 465):
        subject = f"signed {mode} {port} {uuid.uuid4().hex}"
        submit_raw(world.host, awkward_message(subject), f"bob@{PEER_DOMAIN}", port=port)
        verdict, received = peer_verifies(world, subject)
        assert verdict == "signature ok", (verdict, received[:3000])
        assert f"d={DOMAIN}" in received and "s=mail" in received
        assert "\n.a line starting with a dot\n" in received and "\n..two dots\n" in received
        assert "Grüße, café, 日本語" in received and "long " * 190 + "end" in received
    if mode != "ofmipd":
        pyinfra(world.host, data=world.data)


def test_without_its_key_mail_waits_and_leaves_signed_once_the_key_is_back(world):
    host = world.host
    host.ssh(f"mv {KEY} /root/held-dkim-key")
    try:
        subject = f"deferred {uuid.uuid4().hex}"
        submit_raw(host, awkward_message(subject), f"bob@{PEER_DOMAIN}")
        deadline, deferral = time.monotonic() + 30, ""
        while time.monotonic() < deadline and "DKIM" not in deferral:
            time.sleep(1)
            deferral = host.ssh("grep -a deferral /var/log/qmail/qmail-send/current | tail -1").stdout
        assert "DKIM_signing_failed" in deferral, deferral
        host.ssh("svc -a /etc/service/qmail-send")
        time.sleep(5)
        assert world.peer.find_message(subject) is None  # nothing unsigned left
        assert int(host.ssh("/var/qmail/bin/qmail-qstat | sed -n 's/^messages in queue: //p'").stdout) >= 1
        results = verify_results(world)
        assert results["dkim_keys"][0] == "error" and "missing" in results["dkim_keys"][1], results["dkim_keys"]
    finally:
        host.ssh(f"mv /root/held-dkim-key {KEY}")
    host.ssh("svc -a /etc/service/qmail-send")
    verdict, _ = peer_verifies(world, subject)
    assert verdict == "signature ok"


def _sign_as_peer(tmp_path: Path, subject: str, selector: str, domain: str = PEER_DOMAIN) -> tuple[bytes, list]:
    """A message from carol signed as the peer's domain would sign it (dkimpy), with a new key
    under SELECTOR (a name never asked before: the host's unbound caches answers); its DNS value."""
    subprocess.run([sys.executable, "-m", "dkim.dknewkey", selector], cwd=tmp_path, check=True, capture_output=True)
    public = dns_txt_strings((tmp_path / f"{selector}.dns").read_text().strip())  # as a zone would hold it
    body = (f"From: carol@{domain}\nTo: {USER}@{DOMAIN}\nSubject: {subject}\n"
            f"Message-ID: <{uuid.uuid4().hex}@{domain}>\n\nhello from the peer\n").encode()
    key = (tmp_path / f"{selector}.key").read_bytes()
    signature = dkim.sign(body, selector.encode(), domain.encode(), key, linesep=b"\n")
    return (signature + body).replace(b"\n", b"\r\n"), public


def _to_port_25(host: sandbox.Host, sender: str, raw: bytes) -> None:
    with smtplib.SMTP(host.address, 25, timeout=60) as client:
        client.ehlo("mx.peer.example.net")
        client.starttls(context=tls_context())
        client.ehlo("mx.peer.example.net")
        client.sendmail(sender, [f"{USER}@{DOMAIN}"], raw)


def delivered(host: sandbox.Host, subject: str, timeout: float = 60) -> str:
    """The message with SUBJECT as delivered to alice's Maildir."""
    return host.ssh(f"cat {wait_for_delivery(host, USER, subject, timeout=timeout)}").stdout


def _results_header(delivered: str) -> str:
    match = re.search(r"^Authentication-Results: " + re.escape(HOSTNAME) + r";(.*?)\n(?=\S)", delivered, re.S | re.M)
    assert match, delivered[:2000]
    return " ".join(match.group(1).split())


def test_port_25_adds_authentication_results_pass_fail_none_temperror_and_spf(world, tmp_path):
    host = world.host
    world.zone[(PEER_DOMAIN, "TXT")] = [f"v=spf1 ip4:{host.gateway} -all"]  # the peer's mail reaches us from there
    signed_subject = f"signed inbound {uuid.uuid4().hex}"
    raw, public = _sign_as_peer(tmp_path, signed_subject, "peerkey")
    world.zone[(f"peerkey._domainkey.{PEER_DOMAIN}", "TXT")] = [public]
    forged = b"Authentication-Results: " + HOSTNAME.encode() + b"; dkim=pass header.d=bank.example\r\n"
    _to_port_25(host, f"carol@{PEER_DOMAIN}", forged + raw)
    header = _results_header(delivered(host, signed_subject, timeout=60))
    assert header.startswith(f"dkim=pass header.d={PEER_DOMAIN} header.s=peerkey"), (header, world.servers[-1].errors)
    assert f"spf=pass smtp.mailfrom=carol@{PEER_DOMAIN}" in header, header
    assert "bank.example" not in delivered(host, signed_subject)  # the forged one is gone
    tampered_subject = f"tampered {uuid.uuid4().hex}"
    raw, public = _sign_as_peer(tmp_path, tampered_subject, "peerkey2")
    world.zone[(f"peerkey2._domainkey.{PEER_DOMAIN}", "TXT")] = [public]
    _to_port_25(host, f"carol@{PEER_DOMAIN}", raw.replace(b"hello from the peer", b"hello from a forger"))
    assert _results_header(delivered(host, tampered_subject, timeout=60)).startswith("dkim=fail")
    # Postfix sends unsigned mail: none
    plain_subject = f"unsigned {uuid.uuid4().hex}"
    world.peer.send(f"carol@{PEER_DOMAIN}", f"{USER}@{DOMAIN}", plain_subject)
    assert _results_header(delivered(host, plain_subject, timeout=90)).startswith("dkim=none")
    # the signer's name server fails: temperror, and the mail is delivered all the same
    broken = "broken.example.net"

    def failing(name, kind):
        if name.endswith(broken):
            raise RuntimeError("SERVFAIL")
        return world.zone.get((name or ".", kind), [])

    for server in world.servers:
        server.zone = failing
    try:
        temp_subject = f"temperror {uuid.uuid4().hex}"
        raw, _ = _sign_as_peer(tmp_path, temp_subject, "peerkey3", domain=broken)
        _to_port_25(host, f"carol@{broken}", raw)
        assert _results_header(delivered(host, temp_subject, timeout=90)).startswith("dkim=temperror")
    finally:
        for server in world.servers:
            server.zone = world.zone


def test_a_rotation_publishes_old_and_new_side_by_side_and_signs_with_the_new(world):
    rotated = {**world.data, "dkim_selector": "mail2", "dkim_retired_selectors": ["mail"]}
    planned, changed, restarted = predicted_and_real(world.host, rotated)
    assert planned == changed == sorted([f"Make the DKIM rsa key mail2 for {DOMAIN}", "Write the DKIM signing table",
                                         SETTINGS_COPY])
    assert restarted == set()  # the table is read per message
    text = records(world, rotated)
    assert f"mail._domainkey.{DOMAIN}." in text and f"mail2._domainkey.{DOMAIN}." in text
    world.publish(text)
    subject = f"rotated {uuid.uuid4().hex}"
    submit_raw(world.host, awkward_message(subject), f"bob@{PEER_DOMAIN}")
    verdict, received = peer_verifies(world, subject)
    assert verdict == "signature ok" and "s=mail2" in received
    planned, changed, _ = predicted_and_real(world.host, world.data)  # back: the old key signs again
    assert planned == changed == ["Write the DKIM signing table", SETTINGS_COPY]
    assert world.host.ssh(f"test -f /etc/qmailhost/dkim/keys/{DOMAIN}/mail2.key", check=False).returncode == 0


def test_after_the_drill_the_key_in_dns_still_verifies_new_mail(world, tmp_path):
    """The host backs up to a second disk (a path repository), which outlives it and goes into
    the bare host that takes its place."""
    password = tmp_path / "restic.password"
    password.write_text(f"restic {uuid.uuid4().hex}\n")
    password.chmod(0o600)
    disk = {"backup_repository": BACKUP_DISK, "backup_password_file": str(password)}
    old, data = world.host, {**world.data, **disk}
    public = world.zone[(f"mail._domainkey.{DOMAIN}", "TXT")]
    pyinfra(old, data=data)
    pyinfra(old, deploy="backup.py", data=data)
    new = sandbox.create(f"t{os.getpid()}-dkim-rebuilt")
    sandbox.move_disk(old, new, BACKUP_DISK)
    sandbox.destroy(old.name)
    world.host = new
    data = {**world.attach(new), "backup_dir": data["backup_dir"], **disk}
    world.data = data
    deploy = pyinfra(new, data=data, check=False)  # held back for the restore: an error, naming the next step
    assert deploy.returncode != 0 and "holds the DKIM key mail of sandbox.test" in deploy.output, deploy.output[-4000:]
    assert re.search(r"dkim_keys\s+error\s+not yet restored.*run restore\.py now", deploy.output), deploy.output[-4000:]
    waiting = f"before restore {uuid.uuid4().hex}"
    submit_raw(new, awkward_message(waiting), f"bob@{PEER_DOMAIN}")
    time.sleep(5)
    assert world.peer.find_message(waiting) is None  # no key yet: it waits, unsigned nowhere
    pyinfra(new, deploy="restore.py", data=data)
    assert world.zone[(f"mail._domainkey.{DOMAIN}", "TXT")] == public  # DNS unchanged
    world.publish(records(world))
    assert world.zone[(f"mail._domainkey.{DOMAIN}", "TXT")] == public  # the host prints the same key
    new.ssh("svc -a /etc/service/qmail-send")
    for subject in (waiting, f"after restore {uuid.uuid4().hex}"):
        if subject != waiting:
            submit_raw(new, awkward_message(subject), f"bob@{PEER_DOMAIN}")
        verdict, _ = peer_verifies(world, subject, timeout=90)
        assert verdict == "signature ok", verdict
    planned, changed, _ = predicted_and_real(new, data)
    assert planned == changed == []
