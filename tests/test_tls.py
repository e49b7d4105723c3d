"""TLS on every port, end to end and judged from outside: STARTTLS on 25 (spamdyke, for
any sender that asks; plaintext still taken), implicit TLS on 465 and STARTTLS on 587
(stunnel), one policy on all of them and on IMAP's 993 and 143 as testssl.sh sees it
(against a stored baseline; 25 in every run, the others in the slow sweep),
the "modern" policy and 465's switch applied and rolled back with exact dry runs, and a
key only root and the TLS group can read."""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import images, sandbox, testssl
from harness.mail import message, submit, swaks, tls_context, wait_for_delivery
from harness.pyinfra_cli import predicted_and_real, pyinfra
from tasks.health import SETTINGS_COPY

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN
BASELINES = Path(__file__).resolve().parent / "baselines"
PORTS = {25: "smtp", 465: None, 587: "smtp"}  # port -> testssl's --starttls


@pytest.fixture(scope="module")
def tlshost(sandbox_ready, sources):
    host = images.create(f"t{os.getpid()}-tls")
    try:
        pyinfra(host)
        yield host
    finally:
        sandbox.destroy(host.name)


def tls_session(host: sandbox.Host, port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """(version, cipher) agreed with PORT as a client using CONTEXT does it (STARTTLS but on 465)."""
    if port == 465:
        with smtplib.SMTP_SSL(host.address, port, timeout=30, context=context) as client:
            client.ehlo("laptop.test")
            return client.sock.version(), client.sock.cipher()[0]
    with smtplib.SMTP(host.address, port, timeout=30) as client:
        client.ehlo("laptop.test")
        client.starttls(context=context)
        return client.sock.version(), client.sock.cipher()[0]


def only(version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    context = tls_context(minimum=version, maximum=version)
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def test_port_25_offers_starttls_and_still_takes_plaintext(tlshost):
    for tls in ("--tls", None):  # swaks as a sending server would: STARTTLS when offered, or not at all
        subject = f"port 25 {tls or 'plain'} {uuid.uuid4().hex}"
        argv = ["swaks", "--server", tlshost.address, "--port", "25", *([tls] if tls else []),
                "--from", "someone@peer.example", "--to", f"{USER}@{DOMAIN}", "--header", f"Subject: {subject}",
                "--timeout", "30"]
        sent = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        assert sent.returncode == 0, sent.stdout[-2000:]
        assert re.search(r"<- +250[ -]STARTTLS", sent.stdout), sent.stdout[-2000:]
        if tls:
            assert "TLS started" in sent.stdout, sent.stdout[-2000:]
        wait_for_delivery(tlshost, USER, subject)


@pytest.mark.parametrize("port", sorted(PORTS))
def test_every_port_serves_tls_1_3_and_the_intermediate_suites_only(tlshost, port):
    assert tls_session(tlshost, port, tls_context())[0] == "TLSv1.3"
    version, cipher = tls_session(tlshost, port, only(ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    for refused in (only(ssl.TLSVersion.TLSv1_1), only(ssl.TLSVersion.TLSv1_2, "AES128-SHA:ECDHE-RSA-AES128-SHA"),
                    only(ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256:AES256-GCM-SHA384")):
        with pytest.raises((ssl.SSLError, ConnectionError, smtplib.SMTPException)):
            tls_session(tlshost, port, refused)


# Port 25's STARTTLS scan in every run; the other ports' (a minute each) in the slow sweep.
# Their policy is checked in every run all the same, by the tests here and in test_imap.py.
SCANS = [pytest.param(25, "smtp", id="25"),
         *(pytest.param(port, starttls, id=str(port), marks=pytest.mark.slow)
           for port, starttls in ((465, None), (587, "smtp"), (993, None), (143, "imap")))]


@pytest.mark.parametrize(("port", "starttls"), SCANS)
def test_testssl_finds_nothing_wrong_and_nothing_worse_than_the_baseline(tlshost, port, starttls):
    reason = testssl.available()
    if reason:
        pytest.skip(reason)
    findings = testssl.scan(tlshost.address, port, starttls=starttls)
    assert testssl.problems(findings) == []
    assert testssl.check_against_baseline(BASELINES / f"testssl-{port}.json", testssl.summary(findings)) == []


def test_implicit_tls_on_465_takes_submissions_with_auth_only(tlshost):
    password = sandbox.sandbox_password()
    msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}", f"465 {uuid.uuid4().hex}")
    submit(tlshost, USER, password, msg, port=465, implicit_tls=True)
    wait_for_delivery(tlshost, USER, msg["Subject"])
    subject = f"swaks 465 {uuid.uuid4().hex}"
    swaks(tlshost, USER, password, subject, port=465, tls="--tls-on-connect")
    wait_for_delivery(tlshost, USER, subject)
    with smtplib.SMTP_SSL(tlshost.address, 465, timeout=30, context=tls_context()) as client:
        client.ehlo("laptop.test")
        code, reply = client.mail(f"{USER}@{DOMAIN}")
        if code == 250:
            code, reply = client.rcpt(f"{USER}@{DOMAIN}")
    assert code >= 500, reply


def test_the_key_is_readable_by_root_and_the_tls_group_only(tlshost):
    stat = tlshost.ssh("stat -c '%a %U %G' /etc/qmailhost/tls/key.pem").stdout.split()
    assert stat == ["640", "root", "qmailtls"]
    assert tlshost.ssh("getent group qmailtls").stdout.strip().endswith(":")  # no member: only the gid is given
    assert tlshost.ssh("su -s /bin/sh nobody -c 'cat /etc/qmailhost/tls/key.pem'", check=False).returncode != 0
    assert tlshost.ssh("su -s /bin/sh qmaild -c 'cat /etc/qmailhost/tls/key.pem'", check=False).returncode != 0


def test_modern_policy_refuses_tls_1_2_everywhere_and_rolls_back(tlshost):
    planned, changed, restarted = predicted_and_real(tlshost, {"tls_policy": "modern"})
    assert planned == changed == sorted(["Write the TLS policy for OpenSSL (spamdyke)", "Write stunnel's config",
                                         "Restart stunnel", "Write Dovecot's config", "Restart dovecot", SETTINGS_COPY])
    assert restarted == {"stunnel", "dovecot"}  # spamdyke reads its config and the policy per connection
    for port in PORTS:
        assert tls_session(tlshost, port, tls_context())[0] == "TLSv1.3"
        with pytest.raises((ssl.SSLError, ConnectionError, smtplib.SMTPException)):
            tls_session(tlshost, port, only(ssl.TLSVersion.TLSv1_2))
    assert pyinfra(tlshost, data={"tls_policy": "modern"}).changed() == []
    planned, changed, _ = predicted_and_real(tlshost, {})
    assert planned == changed and changed
    for port in PORTS:
        assert tls_session(tlshost, port, only(ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"


def test_465_is_a_setting_off_and_on_again(tlshost):
    planned, changed, restarted = predicted_and_real(tlshost, {"submissions_port": None})
    assert planned == changed == sorted(["Write stunnel's config", "Restart stunnel",  # and the caps follow 465
                                         "Load the per-address connection caps",
                                         "Write the per-address connection caps (nftables)", SETTINGS_COPY])
    assert restarted == {"stunnel"}
    assert "[submissions]" not in tlshost.ssh("cat /etc/qmailhost/stunnel.conf").stdout
    with pytest.raises(OSError):
        socket.create_connection((tlshost.address, 465), timeout=3).close()
    msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}", f"587 without 465 {uuid.uuid4().hex}")
    submit(tlshost, USER, sandbox.sandbox_password(), msg)
    wait_for_delivery(tlshost, USER, msg["Subject"])
    planned, changed, _ = predicted_and_real(tlshost, {})
    assert planned == changed
    assert tls_session(tlshost, 465, tls_context())[0] == "TLSv1.3"


def test_the_status_checks_judge_the_policy_on_every_port(tlshost):
    table = dict(re.findall(r"^\s+(\w+)\s+((?:ok|warning|error|skipped)\s+.*)$", pyinfra(tlshost, deploy="verify.py").output,
                            re.MULTILINE))
    assert table["tls_policy"].startswith("ok") and all(f"{port} TLSv1.3" in table["tls_policy"] for port in PORTS)
    assert table["one_certificate"] == "ok       the same certificate on 993, 143, 25, 587, 465"
    assert table["smtp_offers_starttls"].startswith("ok")
