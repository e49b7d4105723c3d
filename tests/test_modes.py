"""Submission modes and TMDA's retirement, end to end: a TMDA-era host is converted,
then the refactor is rolled back and forth (ofmipd -> spamdyke -> ofmipd) while a
client keeps submitting mail; nothing accepted is lost."""

from __future__ import annotations

import os
import re
import smtplib
import threading
import time
import uuid

import pytest

from harness import imap, sandbox
from harness.mail import message, submit, submit_when_up, swaks, tls_context, wait_for_delivery
from harness.pyinfra_cli import pyinfra

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN

# Where a TMDA install kept its pieces, planted inert (nothing of it can run for real).
PLANT_TMDA = r"""
set -e
groupadd -r tofmipd && useradd -r -g tofmipd -d /nonexistent -s /usr/sbin/nologin tofmipd
useradd -m -s /usr/sbin/nologin alice
mkdir -p /home/alice/Maildir/cur /home/alice/Maildir/new /home/alice/Maildir/tmp /home/alice/.tmda/lists
for i in 1 2 3; do printf 'From: old@example.com\nSubject: old mail %s\n\nkept\n' $i > /home/alice/Maildir/cur/100$i.old:2,S; done
printf 'Subject: unread old mail\n\nkept too\n' > /home/alice/Maildir/new/1004.old
printf 'CRYPT_KEY_FILE = "~/.tmda/crypt_key"\n' > /home/alice/.tmda/config
printf '0123456789abcdef0123456789abcdef\n' > /home/alice/.tmda/crypt_key
printf 'friend@example.com\n' > /home/alice/.tmda/lists/whitelist
printf '|/usr/local/bin/tmda-filter\n' > /home/alice/.qmail
printf '|preline /usr/local/bin/tmda-filter\n./Maildir/\n' > /home/alice/.qmail-lists
chown -R alice:alice /home/alice && chmod 600 /home/alice/.tmda/crypt_key
printf '# TMDA site-wide settings\nMAIL_TRANSFER_AGENT = "qmail"\n' > /etc/tmdarc
for p in tmda-ofmipd tmda-filter tmda-inject; do printf '#!/bin/sh\nexec sleep 2147483647\n' > /usr/local/bin/$p; done
chmod 755 /usr/local/bin/tmda-*
mkdir -p /var/qmail/supervise/tmda-ofmipd/log /etc/service
printf '#!/bin/sh\nexec setuidgid tofmipd /usr/local/bin/tmda-ofmipd -p 127.0.0.1:8025\n' \
  > /var/qmail/supervise/tmda-ofmipd/run
printf '#!/bin/sh\nexec cat >/dev/null\n' > /var/qmail/supervise/tmda-ofmipd/log/run
chmod 755 /var/qmail/supervise/tmda-ofmipd/run /var/qmail/supervise/tmda-ofmipd/log/run
ln -s /var/qmail/supervise/tmda-ofmipd /etc/service/tmda-ofmipd
printf '#!/bin/sh\n# tmda-ofmipd init script (inert)\nexit 0\n' > /etc/init.d/tmda-ofmipd && chmod 755 /etc/init.d/tmda-ofmipd
mkdir -p /etc/stunnel
printf 'pid = /run/stunnel-tmda.pid\n\n[submission]\naccept = 587\nconnect = 127.0.0.1:8025\n\n[pop3s]\naccept = 995\nconnect = 110\n' \
  > /etc/stunnel/stunnel.conf
"""
PLANTED = ["/etc/tmdarc", "/home/alice/.tmda/config", "/home/alice/.tmda/crypt_key", "/home/alice/.tmda/lists/whitelist",
           "/home/alice/.qmail", "/home/alice/.qmail-lists", "/usr/local/bin/tmda-ofmipd", "/usr/local/bin/tmda-filter",
           "/var/qmail/supervise/tmda-ofmipd/run", "/etc/init.d/tmda-ofmipd", "/etc/stunnel/stunnel.conf"]


def sums(host: sandbox.Host, paths: str) -> dict[str, str]:
    out = host.ssh(f"find {paths} -type f -exec sha256sum {{}} + 2>/dev/null; true").stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


@pytest.fixture(scope="module")
def tmda_era_host(sandbox_ready, sources):
    host = sandbox.create(f"t{os.getpid()}-modes")
    try:
        host.ssh(PLANT_TMDA)
        host.planted = sums(host, " ".join(PLANTED))
        host.old_mail = sums(host, "/home/alice/Maildir")
        assert len(host.planted) == len(PLANTED) and len(host.old_mail) == 4
        host.first = pyinfra(host)
        yield host
    finally:
        sandbox.destroy(host.name)


def test_one_deploy_retires_every_tmda_piece(tmda_era_host):
    host = tmda_era_host
    assert "Retire TMDA (archive, then remove)" in host.first.changed()
    assert host.ssh("sh /var/lib/qmailhost/tmda/pieces.sh").stdout == ""
    for path in ("/etc/tmdarc", "/home/alice/.tmda", "/home/alice/.qmail", "/etc/service/tmda-ofmipd",
                 "/var/qmail/supervise/tmda-ofmipd", "/etc/init.d/tmda-ofmipd", "/usr/local/bin/tmda-filter"):
        assert host.ssh(f"test -e {path} || test -L {path}", check=False).returncode != 0, path
    assert host.ssh("cat /home/alice/.qmail-lists").stdout == "./Maildir/\n"
    stunnel_conf = host.ssh("cat /etc/stunnel/stunnel.conf").stdout
    assert "8025" not in stunnel_conf and "[pop3s]" in stunnel_conf and "[submission]" not in stunnel_conf
    assert host.ssh("getent passwd tofmipd", check=False).returncode != 0
    assert host.ssh("pgrep -f tmda-ofmipd", check=False).returncode != 0


def test_the_archive_holds_every_piece_as_it_was(tmda_era_host):
    host = tmda_era_host
    archives = host.ssh("ls /var/lib/qmailhost/tmda-archive").stdout.split()
    assert len(archives) == 1
    archive = f"/var/lib/qmailhost/tmda-archive/{archives[0]}"
    manifest = host.ssh(f"cat {archive}/MANIFEST").stdout
    for path, digest in host.planted.items():
        assert f"\t{path}\t{digest}" in manifest, path
    assert "user\ttofmipd" in manifest
    host.ssh(f"mkdir -p /tmp/unpacked && tar -C /tmp/unpacked -xpf {archive}/pieces.tar")
    unpacked = sums(host, "/tmp/unpacked")
    for path, digest in host.planted.items():
        assert unpacked[f"/tmp/unpacked{path}"] == digest, path
    assert host.ssh("stat -c %U /tmp/unpacked/home/alice/.tmda/crypt_key").stdout.strip() == "alice"


def test_old_mail_is_untouched_and_submission_works(tmda_era_host):
    host = tmda_era_host
    assert {p: d for p, d in sums(host, "/home/alice/Maildir").items() if p in host.old_mail} == host.old_mail
    msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}")
    submit_when_up(host, USER, sandbox.sandbox_password(), msg)
    wait_for_delivery(host, USER, msg["Subject"])
    assert pyinfra(host).changed() == []


class Submitter(threading.Thread):
    """Submits mail continuously over PORT (587: STARTTLS; 465: implicit TLS; then AUTH)
    until stopped; remembers which messages were accepted, and each refusal window (from
    the first refusal to the next acceptance)."""

    def __init__(self, host: sandbox.Host, port: int = 587):
        super().__init__(daemon=True)
        self.host, self.port, self.accepted, self.refusals, self.stopping = host, port, [], [], threading.Event()
        self.windows: list[float] = []

    def run(self):
        refused_since = None
        while not self.stopping.is_set():
            msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}",
                          f"continuous {self.port} {len(self.accepted)} {time.time()}")
            try:
                submit(self.host, USER, sandbox.sandbox_password(), msg, port=self.port,
                       implicit_tls=self.port == 465)
                self.accepted.append(msg["Subject"])
                if refused_since is not None:
                    self.windows.append(time.monotonic() - refused_since)
                    refused_since = None
            except (OSError, smtplib.SMTPException) as error:
                self.refusals.append((time.monotonic(), repr(error)))
                refused_since = refused_since or time.monotonic()
                time.sleep(0.05)

    def stop(self):
        self.stopping.set()
        self.join(timeout=60)


def changed_files(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


CONFIG = "/etc/qmailhost /etc/tcp /var/qmail/control /var/qmail/supervise/*/run /var/lib/qmailhost/submission-mode"


def switch(host: sandbox.Host, mode: str) -> None:
    data = {"submission": mode}
    dry = pyinfra(host, "--dry", "--diff", data=data)
    predicted = set(re.findall(r"Will (?:modify|create|remove) (\S+)", dry.output))
    pids, before = host.service_pids(), sums(host, CONFIG)
    real = pyinfra(host, data=data)
    assert changed_files(before, sums(host, CONFIG)) == predicted
    assert sorted(real.changed()) == sorted(dry.planned())
    assert not [op for op in real.changed() if op.startswith("Build")]  # both ofmipds are on the host
    restarted = {service for service, pid in host.service_pids().items() if pids.get(service) != pid}
    assert restarted == {"/etc/service/qmail-ofmipd"}
    assert pyinfra(host, data=data).changed() == []


def assert_submission_guarded(host: sandbox.Host, refusal: bytes) -> None:
    """Real clients can log in and send in this mode; nobody else can."""
    with smtplib.SMTP(host.address, 587, timeout=30) as client:
        client.ehlo("laptop.test")
        assert "auth" not in client.esmtp_features
        client.starttls(context=tls_context())
        client.ehlo("laptop.test")
        assert {"PLAIN", "LOGIN"} <= set(client.esmtp_features.get("auth", "").upper().split()), \
            f"after STARTTLS the EHLO offers no AUTH a mail client can use: {client.esmtp_features}"
        code, reply = client.mail(f"{USER}@{DOMAIN}")
        if code == 250:
            code, reply = client.rcpt(f"{USER}@{DOMAIN}")
    assert code >= 500 and refusal in reply, reply
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submit(host, USER, "not-the-password", message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}"))
    with pytest.raises(OSError):
        __import__("socket").create_connection((host.address, 26), timeout=3).close()
    for mechanism in (None, "LOGIN"):  # swaks picks from the EHLO, or is told LOGIN
        subject = f"swaks {mechanism or 'auto'} {uuid.uuid4().hex}"
        sent = swaks(host, USER, sandbox.sandbox_password(), subject, auth=mechanism)
        assert re.search(r"<~ +250[ -]AUTH .*PLAIN", sent.stdout), sent.stdout[-2000:]
        wait_for_delivery(host, USER, subject)
    refused = swaks(host, USER, sandbox.sandbox_password(), f"no auth {uuid.uuid4().hex}", login=False, check=False)
    assert refused.returncode != 0 and re.search(r"<~\* +5\d\d", refused.stdout), refused.stdout[-2000:]
    # 465, TLS from the first byte (RFC 8314), in front of the same listener
    subject = f"swaks 465 {uuid.uuid4().hex}"
    sent = swaks(host, USER, sandbox.sandbox_password(), subject, port=465, tls="--tls-on-connect")
    assert re.search(r"<~ +250[ -]AUTH .*PLAIN", sent.stdout), sent.stdout[-2000:]
    wait_for_delivery(host, USER, subject)
    msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}", f"SMTP_SSL 465 {uuid.uuid4().hex}")
    submit(host, USER, sandbox.sandbox_password(), msg, port=465, implicit_tls=True)
    wait_for_delivery(host, USER, msg["Subject"])
    refused = swaks(host, USER, sandbox.sandbox_password(), f"465 no auth {uuid.uuid4().hex}", port=465,
                    tls="--tls-on-connect", login=False, check=False)
    assert refused.returncode != 0 and re.search(r"<~\* +5\d\d", refused.stdout), refused.stdout[-2000:]


def test_round_trip_ofmipd_spamdyke_ofmipd_loses_nothing(tmda_era_host):
    host = tmda_era_host
    client, implicit = Submitter(host, 587), Submitter(host, 465)
    client.start()
    implicit.start()
    try:
        time.sleep(3)
        switch(host, "spamdyke")
        assert host.ssh("cat /var/lib/qmailhost/submission-mode").stdout == "spamdyke\n"
        assert "spamdyke -f /etc/qmailhost/spamdyke-ofmipd.conf" in host.ssh(
            "cat /var/qmail/supervise/qmail-ofmipd/run").stdout
        time.sleep(3)
        assert_submission_guarded(host, b"Authentication is required")
        switch(host, "ofmipd")
        assert host.ssh("test -e /etc/qmailhost/spamdyke-ofmipd.conf", check=False).returncode != 0
        assert "ofmipd-auth" in host.ssh("cat /var/qmail/supervise/qmail-ofmipd/run").stdout
        time.sleep(3)
        assert_submission_guarded(host, b"authorize")
        deadline = time.monotonic() + 120
        while min(len(client.accepted), len(implicit.accepted)) < 50 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        client.stop()
        implicit.stop()
    # Reading mail is not submission's business: switch() saw only qmail-ofmipd restart, and IMAP works.
    with imap.session(host, "alice", sandbox.sandbox_password()) as reader:
        assert reader.select("INBOX", readonly=True)[0] == "OK"
    delivered = host.ssh("sleep 5; cat /home/alice/Maildir/new/* | grep '^Subject: continuous'").stdout
    for submitter in (client, implicit):
        accepted = submitter.accepted
        assert len(accepted) >= 50, f"{submitter.port}: only {len(accepted)} accepted; {submitter.refusals[-3:]}"
        missing = [s for s in accepted if f"Subject: {s}\n" not in delivered + "\n"]
        assert missing == [], f"{submitter.port}: {len(missing)} accepted messages were lost"
        print(f"\nport {submitter.port}: {len(accepted)} accepted, {len(submitter.refusals)} refused, "
              f"longest refusal window {max(submitter.windows, default=0):.2f} s over two switches")
