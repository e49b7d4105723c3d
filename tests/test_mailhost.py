"""The mail host on Debian, end to end: the pyinfra CLI over SSH against a bare
throwaway host builds the real sources, starts the real daemons, and real mail goes
through STARTTLS and AUTH into a Maildir."""

from __future__ import annotations

import imaplib
import smtplib
import socket
import ssl

import pytest

from harness import imap, sandbox
from harness.mail import message, submit, submit_when_up, tls_context, wait_for_delivery
from harness.pyinfra_cli import pyinfra
from tasks.health import SETTINGS_COPY

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN


class Deployed:
    def __init__(self, host: sandbox.Host):
        self.host = host
        self.outputs: list[str] = []  # every run's output, searched for secrets at the end

    def deploy(self, *args, **kwargs):
        run = pyinfra(self.host, *args, **kwargs)
        self.outputs.append(run.output)
        return run


@pytest.fixture(scope="module")
def mailhost(sandbox_ready, sources):
    host = sandbox.create(f"t{__import__('os').getpid()}-mailhost")
    try:
        deployed = Deployed(host)
        deployed.first = deployed.deploy("-vv", "--diff")
        yield deployed
    finally:
        sandbox.destroy(host.name)


def password() -> str:
    return sandbox.sandbox_password()


def test_bare_deploy_builds_and_starts_everything(mailhost):
    changed = mailhost.first.changed()
    for op in ("Build and install the sources", "Enable service stunnel", "Wait for svscan to start the new services"):
        assert op in changed
    built = mailhost.host.ssh("ls /var/lib/qmailhost/stamps; ls -l /var/qmail/bin/qmail-queue "
                              "/usr/local/mess822/bin/ofmipd /usr/local/mess822/bin/ofmipd-auth "
                              "/usr/local/bin/checkpassword /usr/local/bin/spamdyke").stdout
    for stamp in ("build-notqmail", "build-mess822", "build-checkpassword", "build-spamdyke"):
        assert stamp in built
    assert "-rws--x--x 1 qmailq qmail" in built  # qmail-queue, installed by notqmail's own instchown
    status = mailhost.host.ssh("sleep 6; svstat /etc/service/*").stdout
    for service in ("qmail-send", "qmail-smtpd", "qmail-ofmipd", "stunnel"):
        assert f"/etc/service/{service}: up" in status


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_with_starttls_and_auth_is_delivered(mailhost, mechanism):
    msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}")
    submit(mailhost.host, USER, password(), msg, mechanism)
    path = wait_for_delivery(mailhost.host, USER, msg["Subject"])
    assert "A test message" in mailhost.host.ssh(f"cat {path}").stdout


def test_port_25_delivers_to_a_local_address_and_an_alias(mailhost):
    for recipient in (f"{USER}@{DOMAIN}", f"postmaster@{DOMAIN}"):
        msg = message("stranger@example.com", recipient)
        with smtplib.SMTP(mailhost.host.address, 25, timeout=30) as client:
            client.send_message(msg)
        wait_for_delivery(mailhost.host, USER, msg["Subject"])


def test_port_25_refuses_to_relay_for_a_stranger(mailhost):
    with smtplib.SMTP(mailhost.host.address, 25, timeout=30) as client:
        client.ehlo("stranger.test")
        client.mail("stranger@example.com")
        code, _ = client.rcpt("victim@example.net")
    assert 500 <= code < 600


def test_submission_without_auth_is_refused(mailhost):
    with smtplib.SMTP(mailhost.host.address, 587, timeout=30) as client:
        client.ehlo("laptop.test")
        client.starttls(context=tls_context())
        client.ehlo("laptop.test")
        assert "auth" in client.esmtp_features  # offered after STARTTLS
        code, reply = client.mail(f"{USER}@{DOMAIN}")
        if code == 250:
            code, reply = client.rcpt(f"{USER}@{DOMAIN}")
    assert code == 503 and b"authorize" in reply


def test_wrong_password_gets_535(mailhost):
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        submit(mailhost.host, USER, password() + "-wrong", message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}"))
    assert refused.value.smtp_code == 535


def test_auth_is_not_offered_before_starttls(mailhost):
    with smtplib.SMTP(mailhost.host.address, 587, timeout=30) as client:
        client.ehlo("laptop.test")
        assert "starttls" in client.esmtp_features
        assert "auth" not in client.esmtp_features
        try:  # stunnel answers anything but STARTTLS with an error or by hanging up
            code, _ = client.docmd("AUTH", "PLAIN")
        except smtplib.SMTPServerDisconnected:
            code = 0
    assert code == 0 or code >= 500


def test_port_26_is_loopback_only(mailhost):
    with pytest.raises(OSError):
        socket.create_connection((mailhost.host.address, 26), timeout=3).close()
    listening = mailhost.host.ssh("cat /proc/net/tcp").stdout
    # 127.0.0.1:26 in /proc/net/tcp's hex: 0100007F:001A, state 0A (LISTEN)
    assert any(line.split()[1] == "0100007F:001A" and line.split()[3] == "0A" for line in listening.splitlines()[1:])


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_below_1_2_is_refused(mailhost, version):
    with smtplib.SMTP(mailhost.host.address, 587, timeout=30) as client:
        client.ehlo("laptop.test")
        with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
            client.starttls(context=tls_context(minimum=version, maximum=version))


def test_tls_1_2_is_accepted(mailhost):
    with smtplib.SMTP(mailhost.host.address, 587, timeout=30) as client:
        client.ehlo("laptop.test")
        client.starttls(context=tls_context(minimum=ssl.TLSVersion.TLSv1_2, maximum=ssl.TLSVersion.TLSv1_2))
        assert client.sock.version() == "TLSv1.2"


def test_least_privilege_for_checkpassword(mailhost):
    host = mailhost.host
    assert host.ssh("stat -c '%a %U %G' /usr/local/bin/checkpassword").stdout.split() == ["4750", "root", "ofmipd"]
    # tcpserver and ofmipd run as ofmipd, not root
    users = host.ssh("ps -eo user:20,args | grep '[t]cpserver.* 26 '").stdout
    assert users.split()[0] == "ofmipd"
    # nobody else may run it
    denied = host.ssh("su -s /bin/sh nobody -c '/usr/local/bin/checkpassword true'", check=False)
    assert denied.returncode == 126 and "Permission denied" in denied.stderr
    # ... while the service's group may, and it checks the real shadow file
    ok = host.ssh(f"printf '%s\\0%s\\0\\0' {USER} '{password()}' | su -s /bin/sh ofmipd -c "
                  "'/usr/local/bin/checkpassword /usr/bin/id -un 3<&0'", check=False)
    assert ok.returncode == 0 and ok.stdout.strip() == USER


def test_second_run_and_dry_diff_report_no_changes(mailhost):
    assert mailhost.deploy().changed() == []
    dry = mailhost.deploy("--dry", "--diff")
    assert dry.planned() == []
    assert "Will modify" not in dry.output and "Will create" not in dry.output


def test_a_domain_change_touches_only_what_reads_it(mailhost):
    host = mailhost.host
    pids = host.service_pids()
    data = {"domains": [DOMAIN, "other.test"]}
    dry = mailhost.deploy("--dry", "--diff", data=data)
    assert sorted(dry.planned()) == ["Make the DKIM rsa key mail for other.test", "Reload qmail-send",
                                     "Write /etc/qmailhost/senders.json",  # what a logged-in account may send as
                                     "Write control/locals", "Write control/rcpthosts", "Write the DKIM signing table",
                                     SETTINGS_COPY]  # (the host's scheduled checks read the domains too)
    assert "+ other.test" in dry.output and dry.output.count("Will modify") == 5  # and the table, senders.json, health.json
    real = mailhost.deploy("--diff", data=data)
    assert sorted(real.changed()) == sorted(dry.planned())
    assert host.ssh("cat /var/qmail/control/locals").stdout.split()[-1] == "other.test"
    # nothing restarted: the same pids (qmail-send only got a HUP)
    assert host.service_pids() == pids
    msg = message("stranger@example.com", f"{USER}@other.test")
    with smtplib.SMTP(host.address, 25, timeout=30) as client:
        client.send_message(msg)
    wait_for_delivery(host, USER, msg["Subject"])
    assert mailhost.deploy(data=data).changed() == []


def test_no_secret_in_any_output(mailhost):
    host = mailhost.host
    key_lines = [line for line in host.ssh("cat /etc/qmailhost/tls/key.pem").stdout.splitlines()
                 if line and not line.startswith("-----")]
    shadow_hash = host.ssh(f"getent shadow {USER} | cut -d: -f2").stdout.strip()
    assert len(key_lines) > 10 and shadow_hash.startswith("$6$")
    mailhost.deploy("-vv", "--dry", "--diff")
    outputs = "\n".join(mailhost.outputs)
    assert password() not in outputs
    assert shadow_hash not in outputs and shadow_hash.split("$")[3][:20] not in outputs
    for line in key_lines:
        assert line not in outputs


def test_debian_12_mail_flows(make_host, sources):
    host = make_host("bookworm")
    pyinfra(host)
    assert host.ssh("cat /etc/debian_version").stdout.startswith("12.")
    msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}")
    submit_when_up(host, USER, password(), msg)
    wait_for_delivery(host, USER, msg["Subject"])
    # Dovecot 2.3's configuration language: imaplib reads the message on 993 and after STARTTLS on 143,
    # where LOGIN before it is refused from outside.
    assert host.ssh("dovecot --version").stdout.startswith("2.3.")
    for port in (993, 143):
        imap.login_when_up(host, USER, password(), port=port)
        with imap.session(host, USER, password(), port) as client:
            assert imap.fetch(client, imap.find(client, msg["Subject"]))["Subject"] == msg["Subject"]
    client = imaplib.IMAP4(host.address, 143, timeout=30)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            client.login(USER, password())
    finally:
        client.shutdown()
    assert pyinfra(host).changed() == []
