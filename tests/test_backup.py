"""Scheduled backups with restic (tasks/backup.py) on one deployed throwaway host, checked the
way their owner would: with restic's own client on the laptop, over sftp, with the password.

The host backs up to a repository on its own disk (a path, as a second disk would be mounted)
every minute, with nobody running anything. The laptop's restic lists the snapshots, finds
a message delivered after the first one in a later snapshot, and checks the repository. The
password is in no output. A wrong password stops the backups, and the host's own status
check says so with restic's reason. Issue 25's later slices (restore from a snapshot, an
append-only rest-server peer) extend this module.
"""

from __future__ import annotations

import calendar
import json
import os
import shlex
import smtplib
import subprocess
import time
import uuid

import pytest

from harness import images, sandbox
from harness.pyinfra_cli import pyinfra

pytestmark = pytest.mark.e2e

REPOSITORY = "/var/backups/qmailhost-restic"  # on the host: a second disk in real life
STATUS = "/var/lib/qmailhost/backup-status"
DOMAIN, USER = sandbox.SANDBOX_DOMAIN, sandbox.SANDBOX_USER


def _password_file(directory, secret: str) -> str:
    path = directory / "restic.pw"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def backed_up(sandbox_ready, sources, tmp_path_factory):
    host = images.create(f"t{os.getpid()}-backup")
    secret = f"restic {uuid.uuid4().hex}"
    data = {"backup_repository": REPOSITORY, "backup_every": "1m", "verify_after_deploy": False,
            "backup_password_file": _password_file(tmp_path_factory.mktemp("restic"), secret)}
    try:
        deploy = pyinfra(host, data=data)
        yield host, data, secret, deploy
    finally:
        sandbox.destroy(host.name)


def _restic(host, secret_file: str, *args: str) -> subprocess.CompletedProcess:
    """restic on the laptop against the host's repository, over sftp with the harness's key."""
    ssh = (f"ssh -q -i {shlex.quote(str(sandbox.ssh_key()))} -o BatchMode=yes -o StrictHostKeyChecking=no "
           f"-o UserKnownHostsFile=/dev/null root@{host.address} -s sftp")
    return subprocess.run(["restic", "-r", f"sftp:root@{host.address}:{REPOSITORY}", "-o", f"sftp.command={ssh}",
                           "--password-file", secret_file, "--no-cache", *args],
                          capture_output=True, text=True, timeout=300)


def _status_after(host, since: float, timeout: float = 240) -> list[str]:
    """The scheduled run's outcome (the status file's fields), once one newer than SINCE is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fields = host.ssh(f"cat {STATUS} 2>/dev/null; true").stdout.strip().split("\t")
        if len(fields) == 3 and calendar.timegm(time.strptime(fields[1], "%Y-%m-%dT%H:%M:%SZ")) >= since:
            return fields
        time.sleep(5)
    raise AssertionError(f"no scheduled backup within {timeout} s: {host.ssh(f'cat {STATUS}; true').stdout!r}")


def _snapshots(host, secret_file: str) -> list[dict]:
    listed = _restic(host, secret_file, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def test_the_host_backs_itself_up_and_the_laptops_restic_agrees(backed_up):
    host, data, secret, deploy = backed_up
    first = _status_after(host, 0)
    assert first[0] == "ok", first
    snapshots = _snapshots(host, data["backup_password_file"])
    assert first[2] in {s["short_id"] for s in snapshots} | {s["id"] for s in snapshots}
    newest = snapshots[-1]
    assert "qmailhost" in newest["tags"] and f"/home/{USER}/Maildir" in newest["paths"], newest

    # A message delivered now is in a later snapshot, with nobody running anything.
    subject = f"backed up {uuid.uuid4().hex}"
    delivered_at = time.time()
    with smtplib.SMTP(host.address, 25, timeout=60) as client:
        client.sendmail(f"someone@{DOMAIN}", [f"{USER}@{DOMAIN}"],
                        f"From: someone@{DOMAIN}\r\nSubject: {subject}\r\n\r\nkeep me\r\n".encode())
    deadline = time.monotonic() + 60
    while not host.ssh(f"grep -l {shlex.quote(subject)} /home/{USER}/Maildir/new/* 2>/dev/null; true").stdout.strip():
        assert time.monotonic() < deadline, "the message was not delivered"
        time.sleep(1)
    name = host.ssh(f"grep -l {shlex.quote(subject)} /home/{USER}/Maildir/new/*").stdout.strip().rsplit("/", 1)[1]
    later = _status_after(host, delivered_at + 1)
    assert later[0] == "ok" and later[2] != first[2], later
    listing = _restic(host, data["backup_password_file"], "ls", "--json", later[2])
    assert listing.returncode == 0, listing.stderr
    paths = {json.loads(line).get("path") for line in listing.stdout.splitlines() if line.startswith("{")}
    assert f"/home/{USER}/Maildir/new/{name}" in paths
    assert not any("/Maildir/tmp/" in (p or "") for p in paths), "a message still in tmp/ was backed up"
    dumped = _restic(host, data["backup_password_file"], "dump", later[2], f"/home/{USER}/Maildir/new/{name}")
    assert subject in dumped.stdout and "keep me" in dumped.stdout

    checked = _restic(host, data["backup_password_file"], "check", "--read-data")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # The password: root's alone on the host, in no output of the deploy.
    assert host.ssh("stat -c '%a %U' /etc/qmailhost/backup/password").stdout.split() == ["600", "root"]
    assert secret not in deploy.output


def _backup_age(host, data: dict) -> tuple[int, str]:
    """verify.py's exit status and its backup_age row."""
    run = pyinfra(host, deploy="verify.py", data=data, json_output=False, check=False, timeout=300)
    rows = [line.strip() for line in run.output.splitlines() if line.strip().startswith("backup_age")]
    assert rows, run.output[-3000:]
    return run.returncode, rows[0]


def test_a_converged_host_changes_nothing_and_its_check_reads_the_last_run(backed_up):
    host, data, _, _ = backed_up
    ok = _status_after(host, 0)
    assert pyinfra(host, data=data).changed() == []
    status, row = _backup_age(host, data)
    assert row.split()[1] == "ok" and ok[2][:8] in row, row


def test_a_wrong_password_stops_the_backups_and_the_check_says_why(backed_up, tmp_path):
    host, data, _, _ = backed_up
    wrong = {**data, "backup_password_file": _password_file(tmp_path, f"wrong {uuid.uuid4().hex}")}
    changed_at = time.time()
    pyinfra(host, data=wrong)
    host.ssh("/etc/qmailhost/backup/backup >/dev/null 2>&1; true")  # the next run, now rather than in a minute
    failed = _status_after(host, changed_at, timeout=90)
    assert failed[0] == "failed" and "password" in failed[2].lower(), failed
    status, row = _backup_age(host, wrong)
    assert status != 0 and row.split()[1] == "error" and "password" in row.lower(), row
