"""The disk-failure drill: mail on a host, a backup, the host lost, a bare host deployed
and restored; every message back byte for byte, the same certificate, the old
passwords, mail flowing, and nothing to change on a second deploy or restore. Also:
a damaged backup is refused before the host is touched, and so is a full or
unwritable backup_dir. Figures (durations) are printed: run with -s to see them.
"""

from __future__ import annotations

import hashlib
import shutil
import smtplib
import socket
import subprocess
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from harness import imap, sandbox
from harness.mail import submit, tls_context, wait_for_delivery
from harness.pyinfra_cli import host_listing, pyinfra
from qmailhost.recovery import backups_in, read_manifest

pytestmark = pytest.mark.e2e

USERS = ("alice", "bob")
MAIL_ROOTS = "/home/alice/Maildir /home/bob/Maildir /var/lib/qmailhost/tmda-archive"
LISTING_ROOTS = "/etc /home /var /root"
ATTACHMENT_NAMES = ('Rechnung März 2024 (final) "v2".pdf', "日本語 ファイル.txt", "../../etc/passwd",
                    "semi;colon=name.zip", "empty")


# --- helpers -------------------------------------------------------------------------------


def _data(tmp_path: Path, **extra) -> dict:
    """Settings with two accounts (bob's password in a file of this test) and backups in tmp_path."""
    bob = tmp_path / "bob.password"
    if not bob.exists():
        bob.write_text(f"bob-{uuid.uuid4().hex}\n")
        bob.chmod(0o600)
    accounts = [{"name": "alice", "password_file": sandbox.sandbox_password_file()},
                {"name": "bob", "password_file": str(bob)}]
    # The drill checks mail itself; the deploy's status checks are tests/test_verify.py's business.
    return {"accounts": accounts, "backup_dir": str(tmp_path / "backups"), "verify_after_deploy": False, **extra}


def _password(data: dict, user: str) -> str:
    path = next(a["password_file"] for a in data["accounts"] if a["name"] == user)
    return Path(path).read_text().strip("\n")


def _timed(function, *args, **kwargs):
    started = time.monotonic()
    result = function(*args, **kwargs)
    return result, time.monotonic() - started


def _figure(text: str) -> None:
    print(f"\nFIGURE: {text}", flush=True)


def _with_attachment(recipient: str, number: int, name: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"] = "sender@example.org", recipient
    msg["Subject"] = f"drill {number} {uuid.uuid4().hex}"
    msg.set_content(f"Message {number} with an attachment called {name!r}.\n")
    payload = b"" if name == "empty" else hashlib.sha256(name.encode()).digest() * (4000 * (number + 1))
    msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename=name)
    return msg


def _deliver_on_port_25(host: sandbox.Host) -> dict[str, int]:
    """Mail from the Internet's side: a few messages with attachments to each account."""
    sent = dict.fromkeys(USERS, 0)
    with smtplib.SMTP(host.address, 25, timeout=30) as client:
        for number, name in enumerate(ATTACHMENT_NAMES):
            user = USERS[number % 2]
            client.send_message(_with_attachment(f"{user}@{sandbox.SANDBOX_DOMAIN}", number, name))
            sent[user] += 1
    return sent


def _wait_for_count(host: sandbox.Host, user: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = host.ssh(f"ls /home/{user}/Maildir/new | wc -l").stdout.strip()
        if int(found) >= count:
            return
        time.sleep(0.3)
    raise AssertionError(f"{user} has {found} of {count} messages after {timeout} s")


_UNUSUAL = r"""
set -e
cd /home/alice/Maildir
first=$(ls new | head -1); mv "new/$first" "cur/$first:2,S"
for folder in ".Sent Items" ".Archiv.Ünïcödé 2024"; do
  mkdir -p "$folder/cur" "$folder/new" "$folder/tmp"; touch "$folder/maildirfolder"
  printf 'Subject: kept in %s\n\nbody\n' "$folder" > "$folder/cur/1700000000.M1P1.name with spaces é:2,RS"
done
chown -R alice:alice . && chmod -R go-rwx .
mkdir -p /var/lib/qmailhost/tmda-archive/alice
printf 'Subject: archived\n\nby TMDA\n' > /var/lib/qmailhost/tmda-archive/alice/1699999999.12345.msg
chown -R alice:root /var/lib/qmailhost/tmda-archive/alice && chmod 750 /var/lib/qmailhost/tmda-archive/alice
"""


def _queue_a_pending_message(host: sandbox.Host, subject: str) -> None:
    """A message for a remote address: the sandbox reaches no name server, so it waits in the queue
    (not under .invalid, which the host's unbound answers itself: no such domain, a bounce)."""
    host.ssh(f"printf 'Subject: {subject}\\n\\nwaiting\\n' | /var/qmail/bin/qmail-inject someone@unreachable.example.net")
    deadline = time.monotonic() + 30
    while "deferral" not in host.ssh("cat /var/log/qmail/qmail-send/current").stdout:
        assert time.monotonic() < deadline, "the remote delivery was not deferred"
        time.sleep(0.3)
    assert "someone@unreachable.example.net" in host.ssh("/var/qmail/bin/qmail-qread").stdout


def _mail_listing(host: sandbox.Host) -> dict[str, str]:
    """path -> owner, group, mode (and size, mtime and sha256 for files) under MAIL_ROOTS."""
    meta = host.ssh(f"find {MAIL_ROOTS} -printf '%p\\t%y %u %g %m %s %T@\\n'").stdout
    sums = host.ssh(f"find {MAIL_ROOTS} -type f -exec sha256sum {{}} +").stdout
    listing = {}
    for line in meta.splitlines():
        path, info = line.split("\t")
        kind, owner, group, mode, size, mtime = info.split()
        listing[path] = f"{kind} {owner} {group} {mode}" + (f" {size} {mtime}" if kind == "f" else "")
    for line in sums.splitlines():
        digest, path = line.split("  ", 1)
        listing[path] += f" {digest}"
    return listing


def _mark_over_imap(host: sandbox.Host, data: dict) -> dict[str, dict[str, frozenset[str]]]:
    """As a mail client would: some messages read, flagged or answered over IMAP (Dovecot renames
    their files into cur/ with :2, suffixes). Returns {user: {Subject: flags}} as IMAP lists them."""
    marks = [r"(\Seen)", r"(\Seen \Flagged)", r"(\Answered)"]
    listed = {}
    for user in USERS:
        with imap.session(host, user, _password(data, user)) as client:
            client.select("INBOX")
            _, found = client.uid("SEARCH", "ALL")
            for uid, mark in zip(found[0].split(), marks, strict=False):
                client.uid("STORE", uid, "+FLAGS", mark)
            listed[user] = imap.flags_by_subject(client)
        assert any(r"\Flagged" in flags for flags in listed[user].values()), listed[user]
    return listed


def _deploy(host: sandbox.Host, data: dict):
    """The deploy, then wait for svscan to start the services (it rescans every 5 s)."""
    run = pyinfra(host, data=data)
    _wait_for_ports(host)
    return run


def _wait_for_ports(host: sandbox.Host, ports=(25, 587), timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                socket.create_connection((host.address, port), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"port {port} of {host.name} does not answer"
                time.sleep(0.2)


def _certificate_sha256(host: sandbox.Host) -> str:
    _wait_for_ports(host, (587,))
    with smtplib.SMTP(host.address, 587, timeout=30) as client:
        client.ehlo("laptop.test")
        client.starttls(context=tls_context())
        return hashlib.sha256(client.sock.getpeercert(binary_form=True)).hexdigest()


def _can_log_in(host: sandbox.Host, user: str, password: str) -> bool:
    _wait_for_ports(host, (587,))
    with smtplib.SMTP(host.address, 587, timeout=30) as client:
        client.ehlo("laptop.test")
        client.starttls(context=tls_context())
        client.ehlo("laptop.test")
        try:
            client.login(user, password)
        except smtplib.SMTPAuthenticationError:
            return False
        return True


def _hash_sums(host: sandbox.Host) -> str:
    """The sha256 of the accounts' name:hash lines (never the hashes themselves)."""
    return host.ssh(f"getent shadow {' '.join(USERS)} | cut -d: -f1,2 | sha256sum | cut -c1-64").stdout.strip()


def _send(host: sandbox.Host, data: dict, sender: str, recipient: str) -> str:
    msg = EmailMessage()
    msg["From"], msg["To"] = f"{sender}@{sandbox.SANDBOX_DOMAIN}", f"{recipient}@{sandbox.SANDBOX_DOMAIN}"
    msg["Subject"] = f"flowing {uuid.uuid4().hex}"
    msg.set_content("New mail after the rebuild.\n")
    submit(host, sender, _password(data, sender), msg)
    return wait_for_delivery(host, recipient, msg["Subject"])


def _damaged_copy(backup: Path, tmp_path: Path) -> Path:
    """A full copy (not hard links) of BACKUP with one byte of one message changed."""
    damaged = tmp_path / "damaged" / backup.name
    shutil.copytree(backup, damaged)
    _, records = read_manifest(damaged)
    victim = damaged / next(r.stored for r in records if r.kind == "file" and "/Maildir/" in r.path)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    return damaged


def _one_line_error(output: str, *words: str) -> str:
    lines = [line for line in output.splitlines() if all(word in line for word in words)]
    assert len(lines) == 1, f"expected one error line with {words}, got:\n{output[-3000:]}"
    return lines[0]


def _assert_private(backup: Path) -> None:
    for path in [backup, *backup.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is mode {mode:o}"


def _assert_no_secrets(output: str, backup: Path) -> None:
    for line in (backup / "shadow").read_text().splitlines():
        assert line.split(":", 1)[1] not in output
    key = (backup / "files/etc/qmailhost/tls/key.pem").read_text().splitlines()
    assert not [line for line in key[1:-1] if line in output]


# --- the drill -----------------------------------------------------------------------------


def test_disaster_recovery_drill(make_host, sources, tmp_path):
    data = _data(tmp_path, backup_queue=True)
    old = make_host()
    _deploy(old, data)

    # Mail of every kind on the old host.
    sent = _deliver_on_port_25(old)
    for user, count in sent.items():
        _wait_for_count(old, user, count)
    old.ssh(_UNUSUAL)
    flags_before = _mark_over_imap(old, data)
    pending = f"pending {uuid.uuid4().hex}"
    _queue_a_pending_message(old, pending)
    mail_before, certificate = _mail_listing(old), _certificate_sha256(old)

    # Backups: the first fetches everything, the second (unchanged) only hard-links.
    first, first_time = _timed(pyinfra, old, deploy="backup.py", data=data)
    second, second_time = _timed(pyinfra, old, deploy="backup.py", data=data)
    earlier, backup = backups_in(tmp_path / "backups")
    _, records = read_manifest(backup)
    files = [r for r in records if r.kind == "file"]
    assert {r.path for r in files} == {p for p, info in mail_before.items() if info.startswith("f")} | {
        "/etc/qmailhost/tls/cert.pem", "/etc/qmailhost/tls/key.pem",
        "/etc/qmailhost/dkim/keys/sandbox.test/mail.key", "/etc/qmailhost/dkim/keys/sandbox.test/mail.dns"}
    for record in files:
        assert (backup / record.stored).stat().st_ino == (earlier / record.stored).stat().st_ino, record.path
    assert [r.kind for r in records].count("message") == 1
    # Dovecot's indexes and caches (it rebuilds them) stay behind; its UID list travels with the Maildir.
    assert "dovecot.index" in old.ssh("find /home/alice/.dovecot-index -type f").stdout
    assert not [r.path for r in records if "dovecot.index" in r.path or "/.dovecot-index" in r.path]
    assert "/home/alice/Maildir/dovecot-uidlist" in {r.path for r in files}
    _assert_private(backup)
    _assert_no_secrets(first.output + second.output, backup)
    backed_up_hashes = hashlib.sha256((backup / "shadow").read_bytes()).hexdigest()
    assert backed_up_hashes == _hash_sums(old)
    # Onto the host it came from, a restore has nothing to do (the pending message is still queued).
    assert pyinfra(old, deploy="restore.py", data=data).changed() == []

    # The disk dies; a bare host takes its place, is deployed and receives mail.
    sandbox.destroy(old.name)
    new = make_host()
    started = time.monotonic()
    _deploy(new, data)
    deployed = time.monotonic() - started
    flowing_path = _send(new, data, "alice", "bob")
    flowing = time.monotonic() - started
    assert _hash_sums(new) != backed_up_hashes  # same passwords, new salts: the restore has work to do

    # A damaged backup is refused before anything on the host changes.
    damaged = _damaged_copy(backup, tmp_path)
    untouched = host_listing(new, LISTING_ROOTS)
    refused = pyinfra(new, deploy="restore.py", data={**data, "restore_from": str(damaged)}, check=False)
    assert refused.returncode != 0
    _one_line_error(refused.output, "restore_from", "is damaged", "sha256")
    assert host_listing(new, LISTING_ROOTS) == untouched

    # The restore: every message back, byte for byte, with its owner, mode and mtime.
    restore, restore_time = _timed(pyinfra, new, deploy="restore.py", data=data)
    _assert_no_secrets(restore.output, backup)
    mail_after = _mail_listing(new)
    for path, info in mail_before.items():
        if info.startswith("f"):
            assert mail_after.get(path) == info, path
        else:
            assert (mail_after.get(path) or "").split()[:4] == info.split()[:4], path
    assert flowing_path in mail_after  # the mail delivered before the restore is still there
    assert _certificate_sha256(new) == certificate
    assert _hash_sums(new) == backed_up_hashes
    for user in USERS:
        assert _can_log_in(new, user, _password(data, user))
    assert not _can_log_in(new, "bob", "not-the-password")
    queue = new.ssh("/var/qmail/bin/qmail-qread; grep -rl 'Subject: " + pending + "' /var/qmail/queue/mess").stdout
    assert "someone@unreachable.example.net" in queue and "/var/qmail/queue/mess/" in queue
    _send(new, data, "bob", "alice")
    # An IMAP client sees the same messages with the same flags.
    for user, flags in flags_before.items():
        with imap.session(new, user, _password(data, user)) as client:
            after = imap.flags_by_subject(client)
        assert {subject: after.get(subject) for subject in flags} == flags, user

    # Converged: a second deploy and a second restore change nothing.
    assert pyinfra(new, data=data).changed() == []
    assert pyinfra(new, deploy="restore.py", data=data).changed() == []

    _figure(f"drill ({sum(sent.values())} messages, {sum(r.size for r in files) // 1024} KiB): bare host to mail "
            f"flowing {flowing:.0f} s (deploy {deployed:.0f} s), to mail restored {deployed + restore_time:.0f} s "
            f"(restore {restore_time:.1f} s); backup {first_time:.1f} s, unchanged backup {second_time:.1f} s")


def test_backup_refuses_a_full_or_unwritable_backup_dir(make_host, tmp_path):
    host = make_host()
    host.ssh("useradd -m alice && mkdir -p /home/alice/Maildir/new && "
             "head -c 2000000 /dev/urandom > /home/alice/Maildir/new/1700000000.big && chown -R alice: /home/alice")
    destination = tmp_path / "small-disk"
    destination.mkdir()
    data = {"backup_dir": str(destination / "backups")}
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(destination)], check=True)
    try:
        full = pyinfra(host, deploy="backup.py", data=data, check=False)
        assert full.returncode != 0
        _one_line_error(full.output, "setting 'backup_dir'", "free", "needs about")
        assert list(destination.iterdir()) == []
        subprocess.run(["mount", "-o", "remount,ro,size=64m", str(destination)], check=True)
        unwritable = pyinfra(host, deploy="backup.py", data=data, check=False)
        assert unwritable.returncode != 0
        _one_line_error(unwritable.output, "setting 'backup_dir'", "cannot be written")
    finally:
        subprocess.run(["umount", str(destination)], check=True)


# --- the large mailbox (not in CI) ---------------------------------------------------------

_GENERATE = r"""
set -e
cd /home/alice/Maildir/cur
line=$(printf '%070d' 0)
i=0
while [ $i -lt {count} ]; do
  {{ printf 'From: bulk@example.org\nTo: alice@sandbox.test\nSubject: bulk %d\n\n' $i
     j=0; while [ $j -lt $((i % 40 + 5)) ]; do echo "$i $line"; j=$((j + 1)); done; }} > "1700$i.M${{i}}P1.bulk:2,S"
  i=$((i + 1))
done
chown alice:alice . -R
"""


@pytest.mark.slow
def test_large_mailbox_drill(make_host, sources, tmp_path):
    count = 20_000
    data = _data(tmp_path)
    old = make_host()
    _deploy(old, data)
    _, generated = _timed(old.ssh, _GENERATE.format(count=count), timeout=1200)
    checksum = "find /home/alice/Maildir -type f -exec sha256sum {} + | sort | sha256sum"
    before = old.ssh(checksum).stdout
    size = int(old.ssh("du -sb /home/alice/Maildir | cut -f1").stdout.split()[0])

    _, first_time = _timed(pyinfra, old, deploy="backup.py", data=data)
    _, second_time = _timed(pyinfra, old, deploy="backup.py", data=data)
    sandbox.destroy(old.name)

    new = make_host()
    started = time.monotonic()
    _deploy(new, data)
    deployed = time.monotonic() - started
    _send(new, data, "alice", "bob")
    flowing = time.monotonic() - started
    _, restore_time = _timed(pyinfra, new, deploy="restore.py", data=data, timeout=2400)
    assert new.ssh(checksum).stdout == before
    assert int(new.ssh("ls /home/alice/Maildir/cur | wc -l").stdout) == count
    assert pyinfra(new, deploy="restore.py", data=data).changed() == []

    _figure(f"large mailbox ({count} messages, {size // 2**20} MiB, generated in {generated:.0f} s): "
            f"bare host to mail flowing {flowing:.0f} s, to mail restored {deployed + restore_time:.0f} s "
            f"(restore {restore_time:.1f} s); backup {first_time:.1f} s, unchanged backup {second_time:.1f} s")
