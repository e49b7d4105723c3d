"""The running host is the truth, end to end: what a deploy repairs on disk it repairs in
the running service too, the dry run says so first, a TLS pair made anew is the one
served, a pair near expiry is renewed, and a DNS blocklist that refuses the host's
resolver is an error the owner sees (a test resolver on the sandbox's veth answers like
Spamhaus does to a shared resolver). One host for the module, deployed once."""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from harness import images, sandbox
from harness.dns_server import DnsServer
from harness.mail import swaks, wait_for_delivery
from harness.pyinfra_cli import pyinfra
from tests.test_verify import verify

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN
QUIET = {"verify_after_deploy": False}
CERT = "/etc/qmailhost/tls/cert.pem"


@pytest.fixture(scope="module")
def host(sandbox_ready, sources):
    made = images.create(f"t{os.getpid()}-drift")
    try:
        pyinfra(made, data=QUIET)
        yield made
    finally:
        sandbox.destroy(made.name)


def reachable(host: sandbox.Host, port: int) -> bool:
    try:
        socket.create_connection((host.address, port), timeout=3).close()
    except OSError:
        return False
    return True


def wait_for(condition, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.3)


def served_certificate(host: sandbox.Host) -> bytes:
    """The certificate (DER) stunnel serves on 587 after STARTTLS, as a client sees it."""
    import smtplib

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP(host.address, 587, timeout=20) as client:
        client.ehlo("laptop.test")
        client.starttls(context=context)
        return client.sock.getpeercert(binary_form=True)


def host_certificate(host: sandbox.Host) -> bytes:
    return ssl.PEM_cert_to_DER_cert(host.ssh(f"cat {CERT}").stdout)


@dataclass(frozen=True)
class Breakage:
    name: str
    command: str  # done by hand over SSH
    repair: frozenset[str]  # the operations --dry --diff must show, and the deploy run
    broken: Callable[[sandbox.Host], bool] = lambda host: True  # true once the breakage took


BREAKAGES = [
    Breakage("ofmipd listening on 0.0.0.0",
             "sed -i 's/ 127.0.0.1 26 / 0 26 /' /etc/service/qmail-ofmipd/run && svc -t /etc/service/qmail-ofmipd",
             frozenset({"Write the run script of qmail-ofmipd", "Restart qmail-ofmipd"}),
             broken=lambda host: reachable(host, 26)),
    Breakage("an open-relay smtp.cdb",
             "printf ':allow,RELAYCLIENT=\"\"\\n' | tcprules /etc/tcp/smtp.cdb /etc/tcp/smtp.tmp",
             frozenset({"Compile smtp.cdb"})),
    Breakage("stunnel allowing TLS 1.0",
             "sed -i 's/^sslVersionMin = .*/sslVersionMin = TLSv1/' /etc/qmailhost/stunnel.conf "
             "&& svc -t /etc/service/stunnel",
             frozenset({"Write stunnel's config", "Restart stunnel"})),
    Breakage("a deleted certificate", f"rm -f {CERT} /etc/qmailhost/tls/key.pem",
             frozenset({"Make a self-signed certificate for mail.sandbox.test", "Restart stunnel",
                        "Reload dovecot"})),
    Breakage("a stopped service", "svc -d /etc/service/qmail-smtpd",
             frozenset({"Enable service qmail-smtpd"}),
             broken=lambda host: ": down" in host.ssh("svstat /etc/service/qmail-smtpd").stdout),
]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=[b.name for b in BREAKAGES])
def test_a_hand_breakage_is_shown_then_repaired_on_disk_and_in_the_running_service(host, breakage):
    host.ssh(breakage.command)
    wait_for(lambda: breakage.broken(host), f"{breakage.name} taking effect")
    dry = pyinfra(host, "--dry", "--diff", data=QUIET)
    assert set(dry.planned()) == breakage.repair, dry.output[-3000:]
    real = pyinfra(host, data=QUIET)
    assert sorted(real.changed()) == sorted(dry.planned())
    checked = verify(host)  # no second run: the one deploy repaired the running host
    assert checked.returncode == 0 and "error" not in checked.statuses().values(), checked.output[-3000:]
    assert not reachable(host, 26)
    assert pyinfra(host, data=QUIET).changed() == []


DPKG_WORK = "Finish an interrupted dpkg run"
HOLD_DPKG_LOCK = ("import fcntl, time; f = open('/var/lib/dpkg/lock-frontend', 'w'); "
                  "fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)")


def test_a_deploy_waits_for_apt_only_while_apt_holds_its_lock(host):
    """The host's scheduled `updates` check simulates an upgrade (apt-get -s, no lock) every
    run: that is no dpkg work in progress, and a deploy that met one planned work it then did
    not need (CI saw it). apt or dpkg holding its lock, as unattended-upgrades does, is."""
    simulating = host.ssh("nohup sh -c 'while :; do apt-get -s -o Debug::NoLocking=1 dist-upgrade "
                          ">/dev/null 2>&1; done' >/dev/null 2>&1 & echo $!").stdout.strip()
    try:
        wait_for(lambda: host.ssh("pgrep -x apt-get", check=False).returncode == 0, "a simulation running")
        assert DPKG_WORK not in pyinfra(host, "--dry", data=QUIET).planned()
    finally:
        host.ssh(f"kill {simulating}")
    holder = host.ssh(f"nohup python3 -c \"{HOLD_DPKG_LOCK}\" >/tmp/holder.out 2>&1 & echo $!").stdout.strip()
    try:
        wait_for(lambda: host.ssh("cat /tmp/holder.out").stdout.strip() == "held", "the lock held")
        assert DPKG_WORK in pyinfra(host, "--dry", data=QUIET).planned()
    finally:
        host.ssh(f"kill {holder}")

def test_a_pair_made_anew_on_the_host_is_the_one_served(host):
    old = host_certificate(host)
    assert served_certificate(host) == old
    host.ssh("rm -f /etc/qmailhost/tls/cert.pem /etc/qmailhost/tls/key.pem")
    dry = pyinfra(host, "--dry", data=QUIET)
    assert set(dry.planned()) == {"Make a self-signed certificate for mail.sandbox.test", "Restart stunnel",
                                  "Reload dovecot"}
    pyinfra(host, data=QUIET)
    new = host_certificate(host)
    assert new != old
    wait_for(lambda: served_certificate(host) == new, "stunnel serving the new pair")
    assert pyinfra(host, data=QUIET).changed() == []


def test_a_self_signed_pair_near_expiry_is_renewed_and_served(host):
    host.ssh("cd /etc/qmailhost/tls && umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -days 10 "
             "-subj /CN=mail.sandbox.test -keyout key.pem -out cert.pem 2>/dev/null && chmod 644 cert.pem "
             "&& svc -t /etc/service/stunnel")
    near = host_certificate(host)
    wait_for(lambda: served_certificate(host) == near, "stunnel serving the pair near expiry")
    assert "expires in 9 days" in verify(host).results["certificate_expiry"][1]
    pyinfra(host, data=QUIET)
    renewed = host_certificate(host)
    assert renewed != near
    wait_for(lambda: served_certificate(host) == renewed, "stunnel serving the renewed pair")
    expiry = verify(host).results["certificate_expiry"]
    assert expiry[0] == "ok" and int(re.search(r"expires in (\d+) days", expiry[1])[1]) > 800
    assert pyinfra(host, data=QUIET).changed() == []


def test_real_clients_submit_swaks_over_starttls(host):
    subject = f"swaks {os.getpid()} {time.time()}"
    sent = swaks(host, USER, sandbox.sandbox_password(), subject)
    assert re.search(r"<~ +250[ -]AUTH .*PLAIN", sent.stdout), sent.stdout[-2000:]
    wait_for_delivery(host, USER, subject)


def _rcpt_on_port_25(host: sandbox.Host) -> int:
    import smtplib

    with smtplib.SMTP(host.address, 25, timeout=30) as client:
        client.ehlo("laptop.test")
        code, _ = client.mail(f"someone@{DOMAIN}")
        if code == 250:
            code, _ = client.rcpt(f"{USER}@{DOMAIN}")
    return code


def _spamhaus(refusing: bool):
    """A Spamhaus-like zone: refusing, it answers 127.255.255.254 to everything (what Spamhaus
    answers a public or shared resolver); else 127.0.0.2 for its test point and nothing else."""

    def answer(name: str, kind: str) -> list[str]:
        if kind != "A" or not name.endswith(".zen.spamhaus.org"):
            return []
        if refusing:
            return ["127.255.255.254"]
        return ["127.0.0.2", "127.0.0.10"] if name == "2.0.0.127.zen.spamhaus.org" else []

    return answer


@pytest.mark.parametrize("refusing", [True, False], ids=["refusing", "answering"])
def test_a_blocklist_refusing_the_hosts_resolver_is_an_error_naming_it(host, refusing):
    resolver = DnsServer(_spamhaus(refusing), address=host.gateway)
    data = {"dns_forwarders": [f"{host.gateway}@{resolver.port}"],
            "spamdyke_filters": {"reject_empty_rdns": False, "reject_unresolvable_rdns": False,
                                 "reject_ip_in_cc_rdns": False, "dns_blacklists": ["zen.spamhaus.org"],
                                 "greeting_delay_secs": 0}}
    try:
        pyinfra(host, data={**QUIET, **data})
        checked = verify(host, **data)
        status, reason = checked.results["blocklists_answer"]
        assert ("2.0.0.127.zen.spamhaus.org", "A") in resolver.asked, "spamdyke's resolver is the host's unbound"
        code = _rcpt_on_port_25(host)  # spamdyke asks the list about this laptop's address
        if refusing:
            assert status == "error" and checked.returncode != 0
            assert reason.startswith("zen.spamhaus.org refuses the host's resolver (it answered 127.255.255.254")
            assert code >= 500, "the refusal makes spamdyke refuse every sender: what the check warns of"
        else:
            assert status == "ok", reason
            assert code == 250
    finally:
        resolver.close()
        pyinfra(host, data=QUIET)
