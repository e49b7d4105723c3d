"""Scheduled backups with restic (tasks/backup.py), checked the way their owner would: with
restic's own client on the laptop, against restic's own append-only server.

A second throwaway host, the vault, runs Debian's restic-rest-server with --append-only behind
a bcrypt htpasswd; the laptop and the mail hosts reach it through a relay on the vault's
gateway (one address for the repository, whichever mail host is alive). With
nobody running anything, the host backs itself up every minute: the laptop's restic lists the
snapshots, finds a message delivered after the first in a later one, reads it back, and
checks the repository. The host cannot delete a snapshot there (403), and its script never
tries. A backup killed halfway leaves a repository the next run completes and `restic check`
finds clean. backup.py backs up now and names the snapshot. The drill: the disk dies, a
bare host is deployed (it makes no DKIM key of its own and holds its backups for the
restore), restore.py puts back the newest snapshot: Maildir (names with their flags, modes,
owners, mtimes, bytes), DKIM key, TLS pair and password hash are those of the lost host, the
pending message (backup_queue) is queued again, new mail flows; then an older snapshot by its
ID brings back what it holds. A wrong password and an unreachable
repository are each an error of the deploy's check in one line naming the setting. No
password (the repository's, the rest server's) is in any output.
"""

from __future__ import annotations

import calendar
import json
import os
import secrets
import shlex
import smtplib
import subprocess
import time
import uuid
from dataclasses import dataclass, field

import bcrypt  # (paramiko's, under pyinfra)
import pytest

from harness import images, sandbox
from harness.mail import LARGE_MAILDIR, queue_a_pending_message
from harness.peer import Relay
from harness.pyinfra_cli import Run, pyinfra

pytestmark = [pytest.mark.e2e, pytest.mark.sources]

PORT = 8000  # the rest server's, on the vault and on the vault's gateway (a relay to it)
STATUS = "/var/lib/qmailhost/backup-status"
SCRIPT = "/etc/qmailhost/backup/backup"
DOMAIN, USER = sandbox.SANDBOX_DOMAIN, sandbox.SANDBOX_USER
MAILDIR = f"/home/{USER}/Maildir"


def _figure(text: str) -> None:
    print(f"\nFIGURE backup: {text}")


def _password_file(directory, secret: str) -> str:
    path = directory / f"restic-{uuid.uuid4().hex[:8]}.pw"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return str(path)


@dataclass
class World:
    host: sandbox.Host
    vault: sandbox.Host
    data: dict
    secret: str
    rest_password: str
    first_deploy: Run
    relays: list = field(default_factory=list)

    @property
    def repository(self) -> str:
        return self.data["backup_repository"]

    def restic(self, *args: str, password_file: str | None = None) -> subprocess.CompletedProcess:
        """The laptop's restic against the repository, with the owner's password file."""
        return subprocess.run(["restic", "-r", self.repository, "--password-file",
                               password_file or self.data["backup_password_file"], "--no-cache", *args],
                              capture_output=True, text=True, timeout=300)

    def snapshots(self) -> list[dict]:
        listed = self.restic("snapshots", "--json")
        assert listed.returncode == 0, listed.stderr
        return json.loads(listed.stdout)


def _start_rest_server(vault: sandbox.Host, user: str, password: str) -> None:
    """Debian's restic-rest-server, append-only, behind a bcrypt htpasswd (what it accepts)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode().replace("$2b$", "$2y$", 1)
    vault.ssh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends restic-rest-server "
              ">/tmp/apt-rest.log 2>&1", timeout=600)
    vault.ssh(f"mkdir -p /srv/restic && printf '%s:%s\\n' {user} {shlex.quote(hashed)} > /srv/restic/.htpasswd && "
              f"(setsid nohup /usr/bin/restic-rest-server --path /srv/restic --listen 0.0.0.0:{PORT} --append-only "
              "--log /var/log/rest-server.log </dev/null >/var/log/rest-server.out 2>&1 &)")
    for _ in range(100):
        if vault.ssh(f"grep -q ':{PORT:04X} .* 0A ' /proc/net/tcp /proc/net/tcp6", check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError("restic-rest-server did not listen: " + vault.ssh("cat /var/log/rest-server.out").stdout)


def _route_to_vault(host: sandbox.Host, vault: sandbox.Host) -> None:
    """HOST reaches the vault's relay (on the laptop's side of the vault's veth) through its own
    gateway, as the laptop reaches it; the repository's address stays when a mail host is rebuilt."""
    subprocess.run(["ip", "-n", host.netns, "route", "add", f"{vault.gateway}/32", "via", host.gateway], check=True)


@pytest.fixture(scope="module")
def world(sandbox_ready, sources, tmp_path_factory):
    vault = sandbox.create(f"t{os.getpid()}-vault")
    host = images.create(f"t{os.getpid()}-backup")
    state = None
    try:
        rest_password = secrets.token_urlsafe(16)
        _start_rest_server(vault, "mailhost", rest_password)
        relays = [Relay(vault.gateway, PORT, vault.address, PORT).start()]
        _route_to_vault(host, vault)
        secret = f"restic {uuid.uuid4().hex}"
        data = {"backup_repository": f"rest:http://mailhost:{rest_password}@{vault.gateway}:{PORT}/mail/",
                "backup_every": "1m", "verify_after_deploy": False,
                "backup_password_file": _password_file(tmp_path_factory.mktemp("restic"), secret)}
        state = World(host, vault, data, secret, rest_password, pyinfra(host, data=data), relays)
        yield state
    finally:
        for relay in state.relays if state else []:
            relay.stop()
        sandbox.destroy((state.host if state else host).name)
        sandbox.destroy(host.name)
        sandbox.destroy(vault.name)


def _status_after(host, since: float, timeout: float = 240) -> list[str]:
    """The scheduled run's outcome (the status file's fields), once one newer than SINCE is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = host.ssh(f"cat {STATUS} 2>/dev/null; true").stdout.strip().split("\t")
        if len(fields) == 3 and calendar.timegm(time.strptime(fields[1], "%Y-%m-%dT%H:%M:%SZ")) >= since:
            return fields
        time.sleep(3)
    raise AssertionError(f"no scheduled backup within {timeout} s: {host.ssh(f'cat {STATUS}; true').stdout!r}")


def _deliver(host, subject: str, body: str = "keep me") -> str:
    """A message through port 25 into alice's Maildir: its file name in new/."""
    with smtplib.SMTP(host.address, 25, timeout=60) as client:
        client.sendmail(f"someone@{DOMAIN}", [f"{USER}@{DOMAIN}"],
                        f"From: someone@{DOMAIN}\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode())
    deadline = time.monotonic() + 60
    while True:
        found = host.ssh(f"grep -l {shlex.quote(subject)} {MAILDIR}/new/* 2>/dev/null; true").stdout.split()
        if found:
            return found[0].rsplit("/", 1)[1]
        assert time.monotonic() < deadline, f"{subject!r} was not delivered"
        time.sleep(1)


def _no_secret(world: World, *outputs: str) -> None:
    for output in outputs:
        assert world.secret not in output and world.rest_password not in output


def test_the_host_backs_itself_up_and_the_laptops_restic_agrees(world):
    host = world.host
    first = _status_after(host, 0)
    assert first[0] == "ok", first
    snapshots = world.snapshots()
    assert first[2] in {s["short_id"] for s in snapshots} | {s["id"] for s in snapshots}
    newest = snapshots[-1]
    assert "qmailhost" in newest["tags"] and newest["hostname"] == sandbox.SANDBOX_HOSTNAME, newest
    assert MAILDIR in newest["paths"], newest

    # A message delivered now is in a later snapshot, with nobody running anything.
    subject = f"backed up {uuid.uuid4().hex}"
    delivered_at = time.time()
    name = _deliver(host, subject)
    later = _status_after(host, delivered_at + 1)
    assert later[0] == "ok" and later[2] != first[2], later
    listing = world.restic("ls", "--json", later[2])
    assert listing.returncode == 0, listing.stderr
    paths = {json.loads(line).get("path") for line in listing.stdout.splitlines() if line.startswith("{")}
    assert f"{MAILDIR}/new/{name}" in paths
    assert not any("/Maildir/tmp/" in (p or "") for p in paths), "a message still in tmp/ was backed up"
    dumped = world.restic("dump", later[2], f"{MAILDIR}/new/{name}")
    assert subject in dumped.stdout and "keep me" in dumped.stdout
    checked = world.restic("check", "--read-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # The password: root's alone on the host, in no output of the deploy or the host's log.
    assert host.ssh("stat -c '%a %U' /etc/qmailhost/backup/password /etc/qmailhost/backup/env").stdout.split() == \
        ["600", "root", "600", "root"]
    _no_secret(world, world.first_deploy.output, host.ssh("cat /var/lib/qmailhost/backup-last.log").stdout)


def test_the_host_cannot_delete_snapshots_from_the_append_only_server(world):
    host = world.host
    before = world.snapshots()
    assert "forget" not in host.ssh("cat /var/lib/qmailhost/backup-last.log").stdout, \
        "no retention is attempted through an append-only server"
    oldest = before[0]["id"]
    forgot = host.ssh(f". /etc/qmailhost/backup/env && restic forget {oldest}", check=False)
    assert "403" in forgot.stdout + forgot.stderr, forgot.stdout + forgot.stderr
    pruned = host.ssh(". /etc/qmailhost/backup/env && restic forget --keep-last 1 --prune", check=False)
    assert pruned.returncode != 0
    after = {s["id"] for s in world.snapshots()}
    assert {s["id"] for s in before} <= after, "the host deleted a snapshot from an append-only server"


def _backup_age(world: World, host, data: dict) -> tuple[int, str, str]:
    """verify.py's exit status, its backup_age row and its whole output."""
    run = pyinfra(host, deploy="verify.py", data=data, json_output=False, check=False, timeout=300)
    rows = [line.strip() for line in run.output.splitlines() if line.strip().startswith("backup_age")]
    assert rows, run.output[-3000:]
    _no_secret(world, run.output)
    return run.returncode, rows[0], run.output


def test_a_converged_host_changes_nothing_and_its_check_reads_the_last_run(world):
    host = world.host
    ok = _status_after(host, 0)
    assert pyinfra(host, data=world.data).changed() == []
    status, row, _ = _backup_age(world, host, world.data)
    assert row.split()[1] == "ok" and ok[2][:8] in row, row


@pytest.fixture(scope="module")
def by_hand(world):
    """From here on, backups run when a test says: backup_every 7d (the next scheduled one is a week
    off); and they carry the queue (backup_queue)."""
    world.data = {**world.data, "backup_every": "7d", "backup_queue": True}
    pyinfra(world.host, data=world.data)
    return world


def test_a_backup_killed_halfway_is_completed_by_the_next_run_and_the_repository_checks_clean(by_hand):
    world, host = by_hand, by_hand.host
    host.ssh(f"head -c 48M /dev/urandom | base64 > {MAILDIR}/cur/1700000000.M1P1.big:2,S && "
             f"chown {USER}:{USER} {MAILDIR}/cur/1700000000.M1P1.big:2,S")
    host.ssh(f"(setsid {SCRIPT} </dev/null >/tmp/killed.out 2>&1 &)")
    deadline = time.monotonic() + 60
    while "backup --tag" not in host.ssh("ps -eo args").stdout:
        assert time.monotonic() < deadline, "the backup did not start"
        time.sleep(0.2)
    time.sleep(1.5)  # uploading
    host.ssh(f"pkill -KILL -f '^/bin/sh {SCRIPT}'; pkill -KILL -f 'r[e]stic backup --tag'; true")  # ([e]: not this shell)
    assert "backup --tag" not in host.ssh("ps -eo args").stdout
    completed = host.ssh(SCRIPT, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    status = host.ssh(f"cat {STATUS}").stdout.split("\t")
    assert status[0] == "ok", status
    listing = world.restic("ls", status[2].strip())
    assert f"{MAILDIR}/cur/1700000000.M1P1.big:2,S" in listing.stdout
    checked = world.restic("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    host.ssh(f"rm -f {MAILDIR}/cur/1700000000.M1P1.big:2,S")


def test_backup_py_backs_up_now_and_names_the_snapshot(by_hand):
    world = by_hand
    before = {s["id"] for s in world.snapshots()}
    run = pyinfra(world.host, deploy="backup.py", data=world.data, json_output=False)
    made = [s for s in world.snapshots() if s["id"] not in before]
    assert len(made) == 1 and f"snapshot {made[0]['short_id']} saved" in run.output, run.output[-2000:]
    _no_secret(world, run.output)


def _maildir(host) -> list[str]:
    """Every message file: name (flags included), mode, owner, group, mtime and sha256."""
    return host.ssh(f"cd {MAILDIR} && find . -path ./tmp -prune -o -type f -printf '%P %m %u %g %T@ ' "
                    "-exec sh -c 'sha256sum < \"$1\" | cut -c1-16' _ {} \\; | sort").stdout.splitlines()


def _keys(host) -> str:
    return host.ssh("cd /etc/qmailhost && sha256sum dkim/keys/*/* tls/cert.pem tls/key.pem && "
                    f"getent shadow {USER} | cut -d: -f2 | sha256sum").stdout


def test_the_drill_from_a_snapshot_then_an_older_one_by_its_id(by_hand):
    world, old = by_hand, by_hand.host
    pending = f"pending {uuid.uuid4().hex}"
    queue_a_pending_message(old, pending)
    seen = _deliver(old, f"flagged {uuid.uuid4().hex}")
    old.ssh(f"mv {MAILDIR}/new/{seen} {MAILDIR}/cur/{seen}:2,S")  # read, as a client marks it
    older = pyinfra(old, deploy="backup.py", data=world.data, json_output=False)
    older_id = world.snapshots()[-1]["id"]
    assert older_id[:8] in older.output
    later = _deliver(old, f"only in the newest {uuid.uuid4().hex}")
    pyinfra(old, deploy="backup.py", data=world.data, json_output=False)
    mail, keys = _maildir(old), _keys(old)
    assert any(line.startswith(f"cur/{seen}:2,S ") for line in mail)

    # The disk dies: a bare host takes its place (the repository stays where it was).
    sandbox.destroy(old.name)
    started = time.monotonic()
    new = world.host = sandbox.create(f"t{os.getpid()}-backup-rebuilt")
    _route_to_vault(new, world.vault)
    checked = {**world.data, "verify_after_deploy": True}
    deploy = pyinfra(new, data=checked, check=False, json_output=False)
    assert deploy.returncode != 0, "held back for the restore: the deploy's checks say so"
    assert f"holds the DKIM key mail of {DOMAIN}" in deploy.output and "snapshot" in deploy.output
    assert "scheduled backups wait for restore.py" in deploy.output
    waiting = [line for line in deploy.output.splitlines() if line.strip().startswith("backup_age")]
    assert waiting and "error" in waiting[0] and "waiting for restore.py" in waiting[0], waiting
    newest_before = world.snapshots()[-1]["id"]
    new.ssh(f"{SCRIPT} >/dev/null 2>&1; true")
    assert world.snapshots()[-1]["id"] == newest_before, "the bare host backed itself up before the restore"

    # The newest: everything, as it was; scheduled backups run again.
    restored = pyinfra(new, deploy="restore.py", data=world.data)
    drill = time.monotonic() - started
    assert "Let scheduled backups run again (the restore is done)" in restored.changed()
    assert _maildir(new) == mail
    queue = new.ssh(f"/var/qmail/bin/qmail-qread; grep -rl 'Subject: {pending}' /var/qmail/queue/mess").stdout
    assert "someone@unreachable.example.net" in queue and "/var/qmail/queue/mess/" in queue, "requeued once"
    assert _keys(new) == keys
    assert pyinfra(new, deploy="restore.py", data=world.data).changed() == []
    assert pyinfra(new, data=checked, json_output=False).returncode == 0, "every check is ok again"
    _deliver(new, f"after the drill {uuid.uuid4().hex}")

    # An older snapshot by its ID: what it holds (a message deleted since comes back, with its
    # flags), nothing it does not.
    new.ssh(f"rm {MAILDIR}/cur/{seen}:2,S {MAILDIR}/new/{later}")
    pyinfra(new, deploy="restore.py", data={**world.data, "restore_from": older_id[:8]})
    names = {line.split()[0] for line in _maildir(new)}
    assert f"cur/{seen}:2,S" in names and f"new/{later}" not in names
    _figure(f"drill from a snapshot (bare host, deploy, restore): {drill:.0f} s")


def test_a_wrong_password_stops_the_backups_and_the_check_says_why(by_hand, tmp_path):
    world, host = by_hand, by_hand.host
    wrong = {**world.data, "backup_password_file": _password_file(tmp_path, f"wrong {uuid.uuid4().hex}")}
    changed_at = time.time()
    pyinfra(host, data=wrong)
    host.ssh(f"{SCRIPT} >/dev/null 2>&1; true")
    failed = _status_after(host, changed_at, timeout=90)
    assert failed[0] == "failed" and "password" in failed[2].lower(), failed
    status, row, _ = _backup_age(world, host, wrong)
    assert status != 0 and row.split()[1] == "error" and "backup_password_file does not open" in row, row
    pyinfra(host, data=world.data)  # the right one again


def test_an_unreachable_repository_fails_the_deploys_check_in_one_line_naming_it(by_hand):
    world, host = by_hand, by_hand.host
    unreachable = {**world.data, "backup_repository": world.repository.replace(f":{PORT}/", f":{PORT + 1}/"),
                   "verify_after_deploy": True}
    deploy = pyinfra(host, data=unreachable, check=False, json_output=False)
    rows = [line.strip() for line in deploy.output.splitlines() if line.strip().startswith("backup_age")]
    shown = f"rest:http://{world.vault.gateway}:{PORT + 1}/mail/"
    assert deploy.returncode != 0 and rows and rows[0].split()[1] == "error", deploy.output[-3000:]
    assert f"backup_repository {shown} cannot be opened from the host: " in rows[0], rows
    assert "refused" in rows[0] or "no answer within 20 s" in rows[0], rows  # (restic retries a refusal)
    _no_secret(world, deploy.output)


@pytest.mark.slow  # 20,000 messages: about 10 minutes
def test_a_large_mailbox_backs_up_and_comes_back_from_a_snapshot(by_hand):
    """The bench of issue 25: first and unchanged backups of 20,000 messages, the repository's
    size against the Maildir's, and the drill's restore, all figures printed (-s)."""

    world, old = by_hand, by_hand.host
    count = 20_000
    old.ssh(LARGE_MAILDIR.format(count=count), timeout=1200)
    checksum = f"find {MAILDIR} -path '*/tmp' -prune -o -type f -print0 | xargs -0 sha256sum | sort | sha256sum"
    before = old.ssh(checksum).stdout
    maildir = int(old.ssh(f"du -sb {MAILDIR} | cut -f1").stdout.split()[0])
    stored = int(world.vault.ssh("du -sb /srv/restic/mail | cut -f1").stdout.split()[0])
    started = time.monotonic()
    pyinfra(old, deploy="backup.py", data=world.data, json_output=False)
    first = time.monotonic() - started
    grown = int(world.vault.ssh("du -sb /srv/restic/mail | cut -f1").stdout.split()[0]) - stored
    started = time.monotonic()
    pyinfra(old, deploy="backup.py", data=world.data, json_output=False)
    unchanged = time.monotonic() - started

    sandbox.destroy(old.name)
    started = time.monotonic()
    new = world.host = sandbox.create(f"t{os.getpid()}-backup-large")
    _route_to_vault(new, world.vault)
    pyinfra(new, data=world.data, check=False)
    deployed = time.monotonic() - started
    restore_started = time.monotonic()
    pyinfra(new, deploy="restore.py", data=world.data, timeout=2400)
    restored = time.monotonic() - restore_started
    assert new.ssh(checksum).stdout == before
    assert int(new.ssh(f"ls {MAILDIR}/cur | wc -l").stdout) >= count
    _figure(f"large mailbox ({count} messages, Maildir {maildir / 2**20:.0f} MiB): first backup {first:.1f} s "
            f"(the repository grew {grown / 2**20:.1f} MiB, {grown / maildir:.2f}x the Maildir), unchanged backup "
            f"{unchanged:.1f} s; drill: bare host deployed in {deployed:.0f} s, restore from the snapshot "
            f"{restored:.1f} s ({deployed + restored:.0f} s from bare to mail restored)")


def test_retention_runs_from_the_laptop_through_a_way_that_may_delete(by_hand):
    """Last: it forgets snapshots. Through the append-only endpoint nothing is deleted and the run
    says so; through the same server without --append-only, backup_keep holds."""
    world, vault = by_hand, by_hand.vault
    vault.ssh(f"(setsid nohup /usr/bin/restic-rest-server --path /srv/restic --listen 0.0.0.0:{PORT + 2} "
              "--log /var/log/rest-server-prune.log </dev/null >/var/log/rest-server-prune.out 2>&1 &)")
    world.relays.append(Relay(vault.gateway, PORT + 2, vault.address, PORT + 2).start())
    before = world.snapshots()
    assert len(before) > 1
    keep_one = {"backup_prune": True, "backup_keep": {"daily": 1, "weekly": 0, "monthly": 0}}
    refused = pyinfra(world.host, deploy="backup.py", data={**world.data, **keep_one,
                                                             "backup_prune_repository": world.repository},
                      json_output=False, check=False)
    assert refused.returncode != 0 and "refused to delete (append-only)" in refused.output, refused.output[-2000:]
    assert len(world.snapshots()) == len(before)
    deleting = world.repository.replace(f":{PORT}/", f":{PORT + 2}/")
    pruned = pyinfra(world.host, deploy="backup.py", data={**world.data, **keep_one,
                                                           "backup_prune_repository": deleting}, json_output=False)
    assert f"{len(before) - 1} of {len(before)} snapshots forgotten" in pruned.output, pruned.output[-2000:]
    assert [s["id"] for s in world.snapshots()] == [before[-1]["id"]], "the newest is the one kept"
    checked = world.restic("check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    _no_secret(world, refused.output, pruned.output)
