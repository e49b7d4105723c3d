"""The laptop's side of restic snapshots (qmailhost/recovery/snapshots.py), against real
repositories that the laptop's own restic makes in a temporary directory.

A snapshot is found by this host's name and tag, newest first or by an ID prefix. Written out,
it is a backup directory of the laptop format whose manifest says exactly what the files are
(sha256, size, mode, owner, mtime to the nanosecond), with the password hashes as its shadow,
no parent directory of the backed-up paths, and no Maildir tmp/. open_backup vets it like any
backup: a snapshot whose files have the wrong owner is refused. A wrong password, an absent
repository and an unreachable one are told apart, each in one line naming its setting, and a
rest server's password is never shown. The end-to-end drill is tests/test_backup.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qmailhost import recovery
from qmailhost.platform import debian
from qmailhost.recovery import snapshots
from qmailhost.recovery.restore import open_backup, verify
from qmailhost.settings import Settings, SettingsError

pytestmark = pytest.mark.skipif(shutil.which("restic") is None,
                                reason="SKIPPED (no restic on this laptop): run ./run setup (apt-get install restic)")

HOSTNAME = "mail.example.org"
HASHES = "alice:$6$rounds=500000$salt$abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ./\n"


def _restic(repository: Path, password: Path, *args: str) -> str:
    result = subprocess.run(["restic", "-r", str(repository), "--password-file", str(password), "-q", *args],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def made(tmp_path, monkeypatch):
    """A repository holding two snapshots of a model host's files under TMP_PATH/host."""
    password = tmp_path / "password"
    password.write_text("correct horse\n")
    password.chmod(0o600)
    repository = tmp_path / "repository"
    _restic(repository, password, "init")
    root = tmp_path / "host"
    maildir = root / "home/alice/Maildir"
    for folder in ("cur", "new", "tmp"):
        (maildir / folder).mkdir(parents=True)
    seen = maildir / "cur/1700000000.M1P1.mail:2,S"
    seen.write_bytes(b"From: a@example.org\r\nSubject: seen\r\n\r\nread\r\n")
    seen.chmod(0o600)
    os.utime(seen, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    (maildir / "tmp/1700000002.M3P3.mail").write_bytes(b"half written")
    stranger = maildir / "cur/1700000003.M4P4.mail:2,"
    stranger.write_bytes(b"Subject: planted\r\n\r\nby nobody\r\n")
    os.chown(stranger, 65534, 65534)  # nobody's: no deploy makes such a file
    hashes = root / "etc/qmailhost/backup/account-hashes"
    hashes.parent.mkdir(parents=True)
    hashes.write_text(HASHES)
    monkeypatch.setattr(snapshots, "hashes_path", lambda platform: str(hashes))
    queue = root / "etc/qmailhost/backup/queue"  # the script's copy of the queue (backup_queue)
    for part, data in (("mess", b"Subject: waiting\r\n\r\nfor bob\r\n"), ("info", b"Fbounce@example.org\0"),
                       ("remote", b"Tbob@peer.test\0Dcarol@peer.test\0")):
        (queue / part / "3").mkdir(parents=True)
        (queue / part / "3" / "170001").write_bytes(data)
    (queue / "mess/3/170002").write_bytes(b"no info yet: still being queued")
    monkeypatch.setattr(snapshots, "queue_copy", lambda platform: str(queue))
    tops = [str(maildir), str(hashes), str(queue)]
    excludes = ["--exclude", str(maildir / "tmp")]
    _restic(repository, password, "backup", "--tag", "qmailhost", "--host", HOSTNAME, *excludes, *tops)
    fresh = maildir / "new/1700000001.M2P2.mail"
    fresh.write_bytes(b"From: b@example.org\r\nSubject: new\r\n\r\nunread\r\n")
    _restic(repository, password, "backup", "--tag", "qmailhost", "--host", HOSTNAME, *excludes, *tops)
    _restic(repository, password, "backup", "--tag", "qmailhost", "--host", "other.example.org", *tops)
    _restic(repository, password, "backup", "--host", HOSTNAME, *tops)  # not ours: no tag
    settings = Settings.from_host_data({"hostname": HOSTNAME, "domains": ["example.org"],
                                        "accounts": [{"name": "alice", "password_file": str(password)}],
                                        "backup_repository": str(repository),
                                        "backup_password_file": str(password)}, inventory_name=HOSTNAME)
    here = snapshots.Repository(str(repository), (), password, HOSTNAME)
    return {"repository": here, "root": root, "maildir": maildir, "seen": seen, "fresh": fresh, "stranger": stranger,
            "hashes": hashes, "settings": settings, "password": password, "path": repository}


def test_this_hosts_tagged_snapshots_oldest_first_the_newest_or_one_by_its_id(made):
    repository = made["repository"]
    found = repository.snapshots()
    assert len(found) == 2 and all(s.hostname == HOSTNAME for s in found)
    assert snapshots.choose(repository, None) == found[-1]
    assert snapshots.choose(repository, found[0].short_id) == found[0]
    with pytest.raises(SettingsError) as unknown:
        snapshots.choose(repository, "0123abcd")
    assert unknown.value.setting == "restore_from" and "no snapshot of mail.example.org" in str(unknown.value)


def test_a_snapshot_written_out_is_a_backup_directory_that_says_exactly_what_its_files_are(made, tmp_path):
    repository = made["repository"]
    newest = snapshots.choose(repository, None)
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    snapshots.materialize(repository, newest, debian("13"), out)
    header, records = recovery.read_manifest(out)
    verify(out, records)
    assert header["hostname"] == HOSTNAME and header["snapshot"] == newest.id and header["accounts"] == ["alice"]
    files = {r.path: r for r in records if r.kind == "file"}
    assert set(files) == {str(made["seen"]), str(made["fresh"]), str(made["stranger"])}, \
        "no tmp/, no hashes file among the files"
    assert files[str(made["stranger"])].owner == "nobody"
    seen = files[str(made["seen"])]
    stat = made["seen"].stat()
    assert (seen.size, seen.mode, seen.mtime_ns, seen.owner) == (stat.st_size, "600", 1_700_000_000_123_456_789,
                                                                 "root")
    assert seen.sha256 == recovery.sha256_file(made["seen"])
    assert (out / seen.stored).read_bytes() == made["seen"].read_bytes()
    assert oct((out / seen.stored).stat().st_mode & 0o777) == "0o600"
    dirs = {r.path for r in records if r.kind == "dir"}
    assert str(made["maildir"]) in dirs and str(made["root"]) not in dirs, "no parent of the backed-up paths"
    shadow = next(r for r in records if r.kind == "shadow")
    assert (out / shadow.stored).read_text() == HASHES
    # the queue's copy: one pending message (the other had no envelope yet), none of its files a host file
    assert not [r for r in records if "/backup/queue" in r.path]
    message = next(r for r in records if r.kind == "message")
    assert (out / message.stored).read_bytes() == b"Subject: waiting\r\n\r\nfor bob\r\n"
    assert (out / message.envelope).read_bytes() == b"Fbounce@example.org\0Tbob@peer.test\0\0", "carol is done"
    assert len([r for r in records if r.kind == "message"]) == 1


def test_an_older_snapshot_lacks_what_came_later(made, tmp_path):
    repository = made["repository"]
    oldest = repository.snapshots()[0]
    out = tmp_path / "old"
    out.mkdir(mode=0o700)
    _, records = recovery.read_manifest(snapshots.materialize(repository, oldest, debian("13"), out))
    assert str(made["fresh"]) not in {r.path for r in records}


def test_a_bare_deploy_sees_the_newest_snapshots_files_and_reads_one(made):
    repository = made["repository"]
    newest = snapshots.choose(repository, None)
    listed = {r.path: r for r in snapshots.records(repository, newest, debian("13"))}
    assert str(made["fresh"]) in listed and str(made["hashes"]) not in listed
    assert repository.read(newest, str(made["seen"])) == made["seen"].read_bytes()


def test_open_backup_vets_a_snapshot_like_any_backup(made, tmp_path):
    """A file of nobody's in alice's Maildir: no deploy makes that, so no restore puts it back."""
    opts = recovery.options(made["settings"])

    def source(wanted):
        out = tmp_path / "vetted"
        out.mkdir(mode=0o700)
        return snapshots.materialize(made["repository"], snapshots.choose(made["repository"], wanted),
                                     debian("13"), out)

    with pytest.raises(SettingsError) as refused:
        open_backup(opts, made["settings"], source)
    assert refused.value.setting == "restore_from" and "'nobody' is none the deploy makes" in str(refused.value), \
        str(refused.value)


def test_a_wrong_password_an_absent_and_an_unreachable_repository_are_told_apart(made, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    with pytest.raises(SettingsError) as refused:
        snapshots.Repository(str(made["path"]), (), wrong, HOSTNAME).snapshots()
    assert refused.value.setting == "backup_password_file" and "not it" not in str(refused.value)
    assert snapshots.Repository(str(tmp_path / "none"), (), made["password"], HOSTNAME).snapshots() == []
    unreachable = snapshots.Repository("rest:http://backup:hunter2@127.0.0.1:9/mail", (), made["password"],
                                       HOSTNAME)  # loopback: nothing listens on 9
    with pytest.raises(SettingsError) as unreached:
        unreachable.snapshots()
    message = str(unreached.value)
    assert unreached.value.setting == "backup_repository" and "rest:http://127.0.0.1:9/mail" in message
    assert "connection refused" in message and "hunter2" not in message and "\n" not in message


def test_retention_from_the_laptop_forgets_only_this_hosts_tagged_snapshots(made):
    """backup.py with backup_prune: restic forget --prune by backup_keep, this host's series alone."""
    from tasks import backup

    def everything() -> list[dict]:
        return json.loads(_restic(made["path"], made["password"], "snapshots", "--json"))

    others = [s["id"] for s in everything() if s["hostname"] != HOSTNAME or "qmailhost" not in (s.get("tags") or [])]
    backup._prune(made["repository"], {"daily": 1, "weekly": 0, "monthly": 0})
    left = everything()
    assert len([s for s in left if s["id"] not in others]) == 1, "one daily snapshot of this host is kept"
    assert set(others) <= {s["id"] for s in left}, "another host's and untagged snapshots are never touched"
    assert _restic(made["path"], made["password"], "check") is not None
