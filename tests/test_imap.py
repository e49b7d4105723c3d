"""Reading mail over IMAP, end to end from the laptop's side of the sandbox (Dovecot counts
loopback as secure, so only a client from outside proves what it refuses): imaplib and
curl log in on 993 and on 143 after STARTTLS, trusting only the host's certificate and
checking its name, and read a message that came in on port 25 and one submitted on 587;
a wrong password and LOGIN before STARTTLS are refused; flags set over IMAP are the
Maildir's :2, suffixes. 143 and POP3 are settings whose dry runs predict exactly what a
deploy does, and a hand edit that lets passwords cross in cleartext is repaired. The time
to the first IMAP login after a deploy is printed (-s); the host starts from the deployed
image (harness/images.py), and bench/imap_cost.py measures it from bare."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import smtplib
import socket
import ssl
import time

import pytest

from harness import images, imap, sandbox
from harness.mail import message, submit, tls_context, wait_for_delivery
from harness.pyinfra_cli import predicted_and_real, pyinfra
from tasks.health import SETTINGS_COPY

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN
CONFIG = "/etc/qmailhost/dovecot.conf"


def password() -> str:
    return sandbox.sandbox_password()


@pytest.fixture(scope="module")
def imaphost(sandbox_ready, sources, tmp_path_factory):
    host = images.create(f"t{os.getpid()}-imap")
    try:
        started = time.monotonic()
        pyinfra(host)
        deployed = time.monotonic() - started
        first_login = imap.login_when_up(host, USER, password())
        print(f"\nFIGURE imap: deploy over the deployed image {deployed:.0f} s, "
              f"first IMAP login {first_login:.2f} s after it")
        host.cafile = imap.certificate_file(host, tmp_path_factory.mktemp("imap"))
        yield host
    finally:
        sandbox.destroy(host.name)


@pytest.fixture(scope="module")
def two_messages(imaphost):
    """One message from the Internet on port 25, one submitted on 587: {how: subject}."""
    inbound = message("stranger@example.com", f"{USER}@{DOMAIN}")
    with smtplib.SMTP(imaphost.address, 25, timeout=30) as client:
        client.send_message(inbound)
    submitted = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}")
    submit(imaphost, USER, password(), submitted)
    for msg in (inbound, submitted):
        wait_for_delivery(imaphost, USER, msg["Subject"])
    return {"port 25": inbound["Subject"], "port 587": submitted["Subject"]}


def when_up(connect, timeout: float = 30):
    """CONNECT()'s client, retried while a service just (re)started is not listening yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def closed(host: sandbox.Host, port: int) -> bool:
    try:
        socket.create_connection((host.address, port), timeout=3).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("port", [993, 143])
def test_imaplib_reads_mail_from_port_25_and_587_verifying_the_host(imaphost, two_messages, port):
    context = imap.verifying_context(imaphost.cafile)
    with imap.session(imaphost, USER, password(), port, context=context) as client:
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert client.select("INBOX")[0] == "OK"
        for how, subject in two_messages.items():
            fetched = imap.fetch(client, imap.find(client, subject))
            assert fetched["Subject"] == subject, how
            assert "A test message" in fetched.get_payload(), how


@pytest.mark.parametrize("port", [993, 143])
def test_curl_lists_inbox_and_fetches_a_message_verifying_the_host(imaphost, two_messages, port):
    listed = imap.curl(imaphost, USER, password(), "", imaphost.cafile, port)
    assert listed.returncode == 0, listed.stderr
    assert "INBOX" in listed.stdout
    found = imap.curl(imaphost, USER, password(), "INBOX", imaphost.cafile, port,
                      extra=("--request", f"UID SEARCH HEADER Subject \"{two_messages['port 25']}\""))
    assert found.returncode == 0, found.stderr
    uid = found.stdout.split()[-1]
    assert uid.isdigit(), found.stdout
    fetched = imap.curl(imaphost, USER, password(), f"INBOX;UID={uid}", imaphost.cafile, port)
    assert fetched.returncode == 0, fetched.stderr
    assert f"Subject: {two_messages['port 25']}" in fetched.stdout


def test_a_wrong_password_is_refused_by_imaplib_and_curl(imaphost):
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"), \
            imap.session(imaphost, USER, "not-the-password"):
        pass
    refused = imap.curl(imaphost, USER, "not-the-password", "", imaphost.cafile)
    assert refused.returncode == 67, (refused.returncode, refused.stderr)  # CURLE_LOGIN_DENIED


def test_login_before_starttls_is_refused_from_outside(imaphost):
    client = imaplib.IMAP4(imaphost.address, 143, timeout=30)
    try:
        assert "LOGINDISABLED" in client.capabilities and "STARTTLS" in client.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            client.login(USER, password())
    finally:
        client.shutdown()


def test_every_imap_port_holds_the_tls_policy(imaphost):
    tls_1_1 = tls_context(maximum=ssl.TLSVersion.TLSv1_1)
    weak_1_2 = tls_context(minimum=ssl.TLSVersion.TLSv1_2, maximum=ssl.TLSVersion.TLSv1_2)
    weak_1_2.set_ciphers("AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-GCM-SHA256")  # CBC, static RSA
    for port in (993, 143):
        for refused in (tls_1_1, weak_1_2):
            with pytest.raises((ssl.SSLError, ConnectionError, imaplib.IMAP4.error)), \
                    imap.session(imaphost, USER, password(), port, context=refused):
                pass
        tls_1_2 = tls_context(minimum=ssl.TLSVersion.TLSv1_2, maximum=ssl.TLSVersion.TLSv1_2)
        with imap.session(imaphost, USER, password(), port, context=tls_1_2) as client:
            assert client.sock.version() == "TLSv1.2" and client.sock.cipher()[0].startswith("ECDHE-")


def test_flags_set_over_imap_are_the_maildirs_suffixes(imaphost, two_messages):
    subject = two_messages["port 587"]
    with imap.session(imaphost, USER, password()) as client:
        uid = imap.find(client, subject)
        client.uid("STORE", uid, "+FLAGS", r"(\Seen \Flagged)")
        assert {r"\Seen", r"\Flagged"} <= imap.flags(client, uid)
    listed = imaphost.ssh(f"grep -l -F 'Subject: {subject}' /home/{USER}/Maildir/cur/*").stdout.split()
    assert len(listed) == 1 and listed[0].endswith(":2,FS"), listed
    index = imaphost.ssh(f"ls -A /home/{USER}/{'.dovecot-index'} /home/{USER}/Maildir").stdout
    assert "dovecot.list.index" in index  # the indexes live beside the Maildir ...
    assert "dovecot.index" not in index.split("/home/alice/Maildir:")[1]  # ... not in it


def test_143_off_and_on_again_is_predicted_exactly(imaphost):
    # The caps follow the ports Dovecot listens on (tasks/limits.py).
    planned, changed, restarted = predicted_and_real(imaphost, {"imap_port": None})
    assert planned == changed == ["Load the per-address connection caps", "Restart dovecot", "Write Dovecot's config", "Write the per-address connection caps (nftables)", SETTINGS_COPY]
    assert restarted == {"dovecot"}
    assert closed(imaphost, 143)
    assert "143" not in imaphost.ssh("nft list table inet qmailhost_limits").stdout
    imap.login_when_up(imaphost, USER, password())
    assert pyinfra(imaphost, data={"imap_port": None}).changed() == []
    planned, changed, restarted = predicted_and_real(imaphost, {})
    assert planned == changed == ["Load the per-address connection caps", "Restart dovecot", "Write Dovecot's config", "Write the per-address connection caps (nftables)", SETTINGS_COPY]
    assert restarted == {"dovecot"}
    assert "143" in imaphost.ssh("nft list table inet qmailhost_limits").stdout
    imap.login_when_up(imaphost, USER, password(), port=143)


def test_pop3_is_a_setting_off_by_default(imaphost, two_messages):
    assert closed(imaphost, 995)
    planned, changed, restarted = predicted_and_real(imaphost, {"pop3s_port": 995})
    assert planned == changed == ["Install the base packages", "Load the per-address connection caps", "Restart dovecot",
                                  "Write Dovecot's config", "Write the per-address connection caps (nftables)",
                                  SETTINGS_COPY]
    assert restarted == {"dovecot"}
    verifying = imap.verifying_context(imaphost.cafile)  # the chain and the name, as a mail client checks them
    with imap.resolving(imap.HOSTNAME, imaphost.address):
        client = when_up(lambda: poplib.POP3_SSL(imap.HOSTNAME, 995, context=verifying, timeout=30))
    try:
        client.user(USER)
        assert client.pass_(password()).startswith(b"+OK")
        count, _size = client.stat()
        assert count >= len(two_messages)
    finally:
        client.quit()
    planned, changed, restarted = predicted_and_real(imaphost, {})
    assert planned == changed == ["Load the per-address connection caps", "Restart dovecot", "Write Dovecot's config", "Write the per-address connection caps (nftables)", SETTINGS_COPY]  # the package stays
    assert closed(imaphost, 995)


def test_a_hand_edit_allowing_cleartext_passwords_is_shown_then_repaired(imaphost):
    # Both lines: Dovecot itself refuses cleartext passwords beside "ssl = required".
    imaphost.ssh(f"sed -i -e 's/^auth_allow_cleartext = no/auth_allow_cleartext = yes/' "
                 f"-e 's/^ssl = required/ssl = yes/' {CONFIG} && svc -t /etc/service/dovecot && sleep 1")
    # the breakage is real: a password crosses in cleartext from outside
    client = when_up(lambda: imaplib.IMAP4(imaphost.address, 143, timeout=30))
    try:
        assert client.login(USER, password())[0] == "OK"
    finally:
        client.shutdown()
    planned, changed, restarted = predicted_and_real(imaphost, {})
    assert planned == changed == ["Restart dovecot", "Write Dovecot's config"]
    assert restarted == {"dovecot"}
    imap.login_when_up(imaphost, USER, password(), port=143)
    client = imaplib.IMAP4(imaphost.address, 143, timeout=30)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            client.login(USER, password())
    finally:
        client.shutdown()


def test_the_status_checks_log_in_over_imap(imaphost):
    output = pyinfra(imaphost, deploy="verify.py", data={"verify_account": {"name": USER}}).output
    table = dict(re.findall(r"^\s+(\w+)\s+((?:ok|warning|error|skipped)\s+.*)$", output, re.MULTILINE))
    assert table["imap_login"].startswith("ok") and "993" in table["imap_login"] and "143" in table["imap_login"]
    assert table["imap_no_cleartext_login"].startswith("ok")
    assert all(f"{port} TLSv1.3" in table["tls_policy"] for port in (25, 465, 587, 993, 143)), table["tls_policy"]
    assert table["one_certificate"] == "ok       the same certificate on 993, 143, 25, 587, 465"
