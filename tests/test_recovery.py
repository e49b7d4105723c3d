"""The disk-failure drill, with the repository on a second disk: mail on a host, backed up
by restic to a path repository (backup_repository: /srv/backup-disk), the host lost, the
disk moved into a bare host, which is deployed (it holds back its DKIM key and its
backups for the restore) and restored; every message back byte for byte, the same
certificate and keys, the old passwords (over SMTP AUTH), the same IMAP flags, the
pending message queued again, mail flowing, and nothing to change on a second deploy or
restore. Also: an unchanged backup adds next to nothing to the repository, Dovecot's
indexes stay behind, and a damaged repository is refused before the host is touched.
The repository is read with restic's own client on the host; restore.py reads it from
the laptop over sftp through the inventory's SSH. Figures: run with -s to see them.
(tests/test_backup.py's drill does the same against an append-only rest server.)
"""

from __future__ import annotations

import hashlib
import json
import shlex
import smtplib
import socket
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest

from harness import imap, sandbox
from harness.mail import queue_a_pending_message, submit, tls_context, wait_for_delivery
from harness.pyinfra_cli import host_listing, pyinfra

pytestmark = pytest.mark.e2e

USERS = ("alice", "bob")
MAIL_ROOTS = "/home/alice/Maildir /home/bob/Maildir /var/lib/qmailhost/tmda-archive"
LISTING_ROOTS = "/etc /home /var/qmail /var/lib /root"
DISK = "/srv/backup-disk"  # the repository: a second disk, moved into the rebuilt host
ATTACHMENT_NAMES = ('Rechnung März 2024 (final) "v2".pdf', "日本語 ファイル.txt", "../../etc/passwd",
                    "semi;colon=name.zip", "empty")


# --- helpers -------------------------------------------------------------------------------


def _data(tmp_path: Path, **extra) -> dict:
    """Settings with two accounts (bob's password in a file of this test) and the repository on the disk."""
    bob, restic = tmp_path / "bob.password", tmp_path / "restic.password"
    for path, secret in ((bob, f"bob-{uuid.uuid4().hex}"), (restic, f"restic {uuid.uuid4().hex}")):
        if not path.exists():
            path.write_text(secret + "\n")
            path.chmod(0o600)
    accounts = [{"name": "alice", "password_file": sandbox.sandbox_password_file()},
                {"name": "bob", "password_file": str(bob)}]
    # The drill checks mail itself; the deploy's status checks are tests/test_verify.py's business.
    return {"accounts": accounts, "backup_repository": DISK, "backup_password_file": str(restic),
            "backup_queue": True, "verify_after_deploy": False, **extra}


def _restic(host: sandbox.Host, arguments: str, repository: str = DISK, check: bool = True):
    """restic's own client on HOST, with the repository password the deploy gave it."""
    return host.ssh(f"set -a && . /etc/qmailhost/backup/env && set +a && "
                    f"restic --no-cache -r {shlex.quote(repository)} {arguments}", check=check)


def _snapshots(host: sandbox.Host) -> list[dict]:
    return json.loads(_restic(host, "snapshots --json").stdout)


def _disk_bytes(host: sandbox.Host) -> int:
    return int(host.ssh(f"du -sb {DISK}/data | cut -f1").stdout.split()[0])


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


def _deploy(host: sandbox.Host, data: dict, check: bool = True):
    """The deploy, then wait for svscan to start the services (it rescans every 5 s)."""
    run = pyinfra(host, data=data, check=check, json_output=False)
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


def _damaged_copy(host: sandbox.Host) -> str:
    """A copy of the repository on HOST's disk with 16 bytes in the middle of every data pack
    overwritten (restic's pack files are encrypted and authenticated: each one now fails)."""
    damaged = f"{DISK}.damaged"
    host.ssh(f"cp -a {DISK} {damaged} && for f in {damaged}/data/*/*; do "
             "printf 0123456789abcdef | dd of=\"$f\" bs=1 seek=$(( $(stat -c %s \"$f\") / 2 )) conv=notrunc "
             "2>/dev/null; done")
    return damaged


def _one_line_error(output: str, *words: str) -> str:
    lines = [line for line in output.splitlines() if all(word in line for word in words)]
    assert len(lines) == 1, f"expected one error line with {words}, got:\n{output[-3000:]}"
    return lines[0]


def _secrets(host: sandbox.Host, data: dict) -> list[str]:
    """What must never be shown: the accounts' hashes, the TLS key's lines, the repository's password."""
    hashes = host.ssh(f"getent shadow {' '.join(USERS)} | cut -d: -f2").stdout.split()
    key = host.ssh("cat /etc/qmailhost/tls/key.pem").stdout.splitlines()[1:-1]
    return [*hashes, *key, Path(data["backup_password_file"]).read_text().strip()]


def _assert_no_secrets(output: str, secrets: list[str]) -> None:
    assert secrets and not [secret for secret in secrets if secret in output]


# --- the drill -----------------------------------------------------------------------------


@pytest.mark.slow  # 5 min; in every run, test_backup's drill (rest, append-only) and test_dkim's (this second disk)
def test_disaster_recovery_drill(make_host, sources, tmp_path):
    data = _data(tmp_path)
    old = make_host()
    _deploy(old, data)

    # Mail of every kind on the old host.
    sent = _deliver_on_port_25(old)
    for user, count in sent.items():
        _wait_for_count(old, user, count)
    old.ssh(_UNUSUAL)
    flags_before = _mark_over_imap(old, data)
    pending = f"pending {uuid.uuid4().hex}"
    queue_a_pending_message(old, pending)
    mail_before, certificate = _mail_listing(old), _certificate_sha256(old)
    keys = old.ssh("sha256sum /etc/qmailhost/dkim/keys/*/*").stdout
    secrets = _secrets(old, data)

    # Backups now (backup.py): the second, unchanged, adds next to nothing to the disk.
    first, first_time = _timed(pyinfra, old, deploy="backup.py", data=data, json_output=False)
    size = _disk_bytes(old)
    second, second_time = _timed(pyinfra, old, deploy="backup.py", data=data, json_output=False)
    grown = _disk_bytes(old) - size
    assert grown < 64 * 1024, f"an unchanged backup added {grown} bytes"
    newest = _snapshots(old)[-1]
    assert newest["short_id"] in second.output and "qmailhost" in newest["tags"]
    listed = _restic(old, f"ls {newest['id']}").stdout.splitlines()
    assert {p for p, info in mail_before.items() if info.startswith("f")} <= set(listed)
    assert {"/etc/qmailhost/tls/cert.pem", "/etc/qmailhost/tls/key.pem",
            "/etc/qmailhost/dkim/keys/sandbox.test/mail.key"} <= set(listed)
    # Dovecot's indexes and caches (it rebuilds them) stay behind; its UID list travels with the Maildir.
    assert "dovecot.index" in old.ssh("find /home/alice/.dovecot-index -type f").stdout
    assert not [path for path in listed if "dovecot.index" in path or "/.dovecot-index" in path]
    assert "/home/alice/Maildir/dovecot-uidlist" in listed
    assert _restic(old, "check").returncode == 0
    _assert_no_secrets(first.output + second.output, secrets)
    backed_up_hashes = _hash_sums(old)
    # Onto the host it came from, a restore has nothing to do (the pending message is still queued).
    assert pyinfra(old, deploy="restore.py", data=data).changed() == []

    # The disk dies; the backup disk goes into a bare host, which is deployed: it makes no DKIM
    # key of its own (the snapshot holds the one DNS publishes) and receives mail.
    new = make_host()
    sandbox.move_disk(old, new, DISK)
    sandbox.destroy(old.name)
    started = time.monotonic()
    held = _deploy(new, {**data, "verify_after_deploy": True}, check=False)
    deployed = time.monotonic() - started
    assert held.returncode != 0 and "holds the DKIM key mail of sandbox.test" in held.output, held.output[-3000:]
    assert "run restore.py now" in held.output
    flowing_path = _send(new, data, "alice", "bob")
    flowing = time.monotonic() - started
    assert _hash_sums(new) != backed_up_hashes  # same passwords, new salts: the restore has work to do

    # A damaged repository is refused before anything on the host changes.
    damaged = _damaged_copy(new)
    untouched = host_listing(new, LISTING_ROOTS)
    refused = pyinfra(new, deploy="restore.py", data={**data, "backup_repository": damaged}, check=False)
    assert refused.returncode != 0, refused.output[-3000:]
    _one_line_error(refused.output, "setting 'backup_repository'", "ciphertext verification failed")
    assert host_listing(new, LISTING_ROOTS) == untouched
    new.ssh(f"rm -rf {damaged}")

    # The restore: every message back, byte for byte, with its owner, mode and mtime.
    restore, restore_time = _timed(pyinfra, new, deploy="restore.py", data=data)
    _assert_no_secrets(restore.output + held.output, secrets)
    mail_after = _mail_listing(new)
    for path, info in mail_before.items():
        if info.startswith("f"):
            assert mail_after.get(path) == info, path
        else:
            assert (mail_after.get(path) or "").split()[:4] == info.split()[:4], path
    assert flowing_path in mail_after  # the mail delivered before the restore is still there
    assert _certificate_sha256(new) == certificate
    assert new.ssh("sha256sum /etc/qmailhost/dkim/keys/*/*").stdout == keys
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

    # Converged: a second deploy and a second restore change nothing; the host backs up again.
    assert pyinfra(new, data=data).changed() == []
    assert pyinfra(new, deploy="restore.py", data=data).changed() == []
    again = pyinfra(new, deploy="backup.py", data=data, json_output=False)
    latest = _snapshots(new)[-1]  # (retention keeps one a day: this one)
    assert latest["time"] > newest["time"] and latest["short_id"] in again.output
    assert flowing_path in _restic(new, f"ls {latest['id']}").stdout.splitlines()

    _figure(f"drill from a second disk ({sum(sent.values())} messages): bare host to mail flowing {flowing:.0f} s "
            f"(deploy {deployed:.0f} s), to mail restored {deployed + restore_time:.0f} s (restore "
            f"{restore_time:.1f} s); backup {first_time:.1f} s, unchanged backup {second_time:.1f} s (+{grown} bytes)")
