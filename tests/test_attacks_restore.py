"""A tampered backup must not give root (issue 24: M4).

A backup directory is files on the laptop (a snapshot written out, or one of the older
format): whoever can write them can edit its manifest and make its sum anew. restore.py
runs as root on the host, so each case here takes a real backup of the model NetBSD
host (as tests/test_netbsd_recovery_plans.py makes one),
tampers with it as an attacker would, and plans restore.py onto a freshly deployed host.
The plan stops with one line naming the backup and the entry, before any operation and
after at most the read-only listing; or it masks the value: then no command, upload or
stream it sends holds the tampered value, a setuid, setgid or sticky bit, or an owner
the deploy never made.

- modes: setuid, setgid and sticky bits (and write for others, execute on a file) are
  masked off; a mode that is not octal digits is refused;
- owners and groups: a name the deploy never made, root in a Maildir, shell in a name;
- accounts: root and a user the inventory does not list, named in the backup's header
  and shadow: never touched; a hash that is no crypt(3) hash is refused;
- paths: climbing out with "..", a file outside the components' parts (a rc.d script,
  ~alice/.qmail), a symbolic link, a file stored as another (the shadow);
- the restore's own stream: send_files refuses a record nobody vetted; requeue quotes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from pyinfra.api import FunctionCommand

from harness.plan_harness import plan_operation
from qmailhost import recovery
from qmailhost.platform import NETBSD_SHELL
from qmailhost.settings import SettingsError
from tests.test_netbsd_recovery_plans import (
    ARCHIVE,
    KEYS,
    MAILDIR,
    RESTORE,
    TLS,
    data,
    deployed,
    execute,
    old_backup,
    plan,
    with_mail,
)

MESSAGE = f"{MAILDIR}/new/1700000001.M1P1.mail.example.org"
FOLDER = f"{MAILDIR}/.Sent Items"
ARCHIVED = f"{ARCHIVE}/alice/1699999999.12345.msg"
KEY, CERT, DKIM_KEY = f"{TLS}/key.pem", f"{TLS}/cert.pem", f"{KEYS}/example.org/mail.key"
ROOT_HASH = "$sha1$24680$rootsalt$0123456789abcdefghijklmnopqr"
TAMPERED_HASH = "$sha1$24680$evilsalt$zyxwvutsrqponmlkjihgfedcba98"
SPECIAL = 0o7000  # setuid, setgid, sticky


@pytest.fixture(scope="module", autouse=True)
def password_env():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
        yield


@pytest.fixture(scope="module")
def fresh():
    """A deployed model host, made once: each test restores onto its own copy."""
    return deployed()


@pytest.fixture(scope="module")
def good_backup(tmp_path_factory, fresh) -> Path:
    """A real backup of a used host, in the older laptop format (as backup.py wrote them: the
    format restore.py reads, a snapshot's written-out form too)."""
    where = tmp_path_factory.mktemp("good")
    old = with_mail(fresh.copy())
    return old_backup(old, data(where), queue=True)


# --- tampering, as anyone who can write the backup can -------------------------------------


def tamper(backup: Path, tmp_path: Path, change) -> Path:
    """A copy of BACKUP whose manifest CHANGE(document, copy) edits; its sum made anew."""
    copy = tmp_path / "tampered" / backup.name
    shutil.copytree(backup, copy)
    document = json.loads((copy / recovery.MANIFEST).read_bytes())
    change(document, copy)
    text = json.dumps(document).encode()
    (copy / recovery.MANIFEST).write_bytes(text)
    (copy / f"{recovery.MANIFEST}.sha256").write_text(f"{hashlib.sha256(text).hexdigest()}  {recovery.MANIFEST}\n")
    return copy


def entry(document: dict, path: str) -> dict:
    return next(r for r in document["records"] if r.get("path") == path)


def setting(path: str, **fields):
    """Set FIELDS of PATH's entry."""
    def change(document, _copy):
        entry(document, path).update(fields)
    return change


def adding(path: str, content: bytes, **fields):
    """A new entry PATH (with its content stored, sum and size right, as the writer stores one)."""
    def change(document, copy):
        stored = copy / ("files" + path)
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(content)
        record = {"kind": "file", "path": path, "stored": "files" + path, "size": len(content),
                  "sha256": hashlib.sha256(content).hexdigest(), "mtime_ns": 1_700_000_000_000_000_000,
                  "mode": "600", "owner": "alice", "group": "alice", **fields}
        document["records"].append(record)
    return change


def adding_dir(path: str, **fields):
    """A new directory entry PATH (directories store nothing)."""
    def change(document, _copy):
        document["records"].append({"kind": "dir", "path": path, "mtime_ns": 1_700_000_000_000_000_000,
                                    "mode": "700", "owner": "alice", "group": "alice", **fields})
    return change


def with_shadow(text: str):
    """The shadow file replaced by TEXT (its entry's sum and size made to match)."""
    def change(document, copy):
        (copy / "shadow").write_bytes(text.encode())
        record = next(r for r in document["records"] if r["kind"] == "shadow")
        record.update(size=len(text.encode()), sha256=hashlib.sha256(text.encode()).hexdigest())
    return change


def stored_as_shadow(document, copy):
    """The message's entry pointing at the shadow file: its hashes would land in alice's Maildir."""
    shadow = next(r for r in document["records"] if r["kind"] == "shadow")
    entry(document, MESSAGE).update(stored="shadow", sha256=shadow["sha256"], size=shadow["size"])


def queued_as(ident: str):
    """The pending message (and its envelope) renamed to IDENT."""
    def change(document, copy):
        message = next(r for r in document["records"] if r["kind"] == "message")
        envelope = next(r for r in document["records"] if r["kind"] == "envelope")
        for record, suffix in ((message, "msg"), (envelope, "env")):
            (copy / record["stored"]).rename(copy / f"queue/{ident}.{suffix}")
            record["stored"] = f"queue/{ident}.{suffix}"
        message["envelope"] = envelope["stored"]
    return change


def climbing(document, copy):
    """The message's path climbs out of the Maildir, onto the password database."""
    entry(document, MESSAGE)["path"] = f"{MAILDIR}/../../../etc/master.passwd"


def relative(document, copy):
    entry(document, MESSAGE)["path"] = "../../etc/passwd"


def symlink(document, copy):
    document["records"].append({"kind": "symlink", "path": f"{MAILDIR}/cur/1700000005.M5P5.link:2,",
                                "target": "/etc/master.passwd", "mode": "777", "owner": "alice", "group": "alice"})


def link_kind(document, copy):
    document["records"].append({"kind": "link", "path": f"{MAILDIR}/cur/1700000006.M6P6.link:2,",
                                "mode": "777", "owner": "alice", "group": "alice"})


# --- refused: one line naming the backup and the entry, before any operation ---------------

REFUSED = {  # case -> (the tampering, what the one-line error names besides the backup)
    "root owns a Maildir message": (setting(MESSAGE, owner="root"), MESSAGE),
    "root owns a Maildir folder": (setting(f"{MAILDIR}/cur", owner="root"), f"{MAILDIR}/cur"),
    "a group not alice's in her Maildir": (setting(MESSAGE, group="wheel"), MESSAGE),
    "an owner holding a shell command": (setting(KEY, owner="x;touch /tmp/pwned"), KEY),
    "a group holding a shell command": (setting(CERT, group="wheel$(touch /tmp/pwned)"), CERT),
    "a mode holding a shell command": (setting(CERT, mode="644;touch /tmp/pwned"), CERT),
    "a mode that is a number": (setting(MESSAGE, mode=0o4755), MESSAGE),
    "an owner the deploy never made": (setting(DKIM_KEY, owner="daemon"), DKIM_KEY),
    "a user the inventory lacks owns a key": (setting(DKIM_KEY, owner="mallory"), DKIM_KEY),
    "a path climbing out": (climbing, "etc/master.passwd"),
    "a relative path": (relative, "../../etc/passwd"),
    "an rc.d script outside the parts": (adding("/etc/rc.d/qmailhost-evil", b"#!/bin/sh\ntouch /tmp/pwned\n",
                                                mode="755", owner="root", group="wheel"), "/etc/rc.d/qmailhost-evil"),
    "a .qmail beside the Maildir": (adding("/home/alice/.qmail", b"|touch /tmp/pwned\n"), "/home/alice/.qmail"),
    "a symbolic link": (symlink, f"{MAILDIR}/cur/1700000005.M5P5.link:2,"),
    "an entry of an unknown kind": (link_kind, f"{MAILDIR}/cur/1700000006.M6P6.link:2,"),
    "a message stored as the shadow": (stored_as_shadow, MESSAGE),
    "a queued message id holding a shell command": (queued_as("x;touch${IFS}pwned"), "x;touch${IFS}pwned"),
    "accounts that are no list": (lambda document, _copy: document.update(accounts="alice root"), "accounts"),
    "a hash holding a colon": (with_shadow(f"alice:{TAMPERED_HASH}:0:0:::\n"), "alice"),
    "an empty hash": (with_shadow("alice:\n"), "alice"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_tampered_backup_is_refused_before_anything_changes(case, good_backup, fresh, tmp_path):
    change, named = REFUSED[case]
    backup = tamper(good_backup, tmp_path, change)
    host = fresh.copy()
    with pytest.raises(SettingsError) as refused:
        plan(host, RESTORE, data(tmp_path, restore_from=str(backup)))
    message = str(refused.value)
    assert "\n" not in message and "restore_from" in message, message
    assert str(backup) in message and named in message, message
    assert TAMPERED_HASH not in message
    # Nothing but the read-only listing reached the host; no operation was planned.
    assert [what for what, _, _ in host.sent] in ([], ["listing what the host already has"])


# --- masked: the restore goes on, with modes the deploy would give -------------------------


MASKED = {  # path -> (the tampered mode, what is restored)
    MESSAGE: ("4755", "644"),  # no setuid, no execute on mail
    FOLDER: ("7777", "755"),  # no setuid, setgid or sticky on a folder, nobody else writes
    ARCHIVED: ("6666", "644"),
}


def _stream_members(host) -> dict[str, tarfile.TarInfo]:
    (what, _, stream), = [sent for sent in host.sent if sent[0] == "restoring files"]
    with tarfile.open(fileobj=io.BytesIO(stream)) as archive:
        return {"/" + m.name.rstrip("/"): m for m in archive.getmembers()}


def _texts(planned) -> list[str]:
    """Every command and upload of a plan, as text (FunctionCommands: their arguments)."""
    texts = []
    for _, commands in planned:
        for command in commands:
            if isinstance(command, FunctionCommand):
                continue
            texts.append(command if isinstance(command, str) else " ".join(map(str, command)))
    return texts


def test_setuid_setgid_and_sticky_bits_are_masked_off_the_stream(good_backup, fresh, tmp_path):
    def change(document, copy):
        for path, (mode, _) in MASKED.items():
            entry(document, path)["mode"] = mode

    backup = tamper(good_backup, tmp_path, change)
    host = fresh.copy()
    planned = plan(host, RESTORE, data(tmp_path, restore_from=str(backup)))
    for mode, _ in MASKED.values():
        assert not [text for text in _texts(planned) if mode in text]
    execute(host, planned)
    members = _stream_members(host)
    assert not [name for name, member in members.items() if member.mode & SPECIAL]
    for path, (_, restored) in MASKED.items():
        assert format(members[path].mode, "o") == restored, path
        assert host.entries()[path]["mode"] == restored, path


def test_the_tls_key_is_restored_without_a_setuid_bit(good_backup, fresh, tmp_path):
    backup = tamper(good_backup, tmp_path, setting(KEY, mode="4755"))
    planned = dict(plan(fresh.copy(), RESTORE, data(tmp_path, restore_from=str(backup))))
    commands = [c for c in planned["Restore the TLS key"] if isinstance(c, str)]
    assert [c for c in commands if f"chmod 644 {KEY}" in c]
    assert not [c for c in commands if "4755" in c]


# --- accounts: only the inventory's, never root ---------------------------------------------


def _header_account(name: str, shadow: str):
    def change(document, copy):
        document["accounts"].append(name)
        with_shadow((copy / "shadow").read_text() + shadow)(document, copy)
    return change


def test_root_named_in_the_backup_is_never_touched(good_backup, fresh, tmp_path, caplog):
    backup = tamper(good_backup, tmp_path, _header_account("root", f"root:{TAMPERED_HASH}\n"))
    host = fresh.copy()
    host.users["root"] = {"uid": "0", "home": "/root", "shell": "/bin/sh", "group": "wheel"}
    host.hashes["root"] = ROOT_HASH
    with caplog.at_level(logging.WARNING):
        planned = plan(host, RESTORE, data(tmp_path, restore_from=str(backup)))
    (_, script, _), = [sent for sent in host.sent if sent[0] == "listing what the host already has"]
    assert "\nfor u in alice; do" in script  # root's home and hash are not even looked at
    assert not [text for text in _texts(planned) if TAMPERED_HASH in text]
    execute(host, planned)
    assert host.hashes["root"] == ROOT_HASH
    assert [r for r in caplog.records if "root" in r.getMessage() and "not restored" in r.getMessage()]


def test_an_account_the_inventory_lacks_is_ignored(good_backup, fresh, tmp_path, caplog):
    mail = "/home/bob/Maildir/new/1700000007.M7P7.mail.example.org"

    def change(document, copy):
        _header_account("bob", f"bob:{TAMPERED_HASH}\n")(document, copy)
        adding_dir("/home/bob/Maildir", owner="bob", group="bob")(document, copy)
        adding(mail, b"Subject: bob's\n", owner="bob", group="bob")(document, copy)

    backup = tamper(good_backup, tmp_path, change)
    host = fresh.copy()  # bob: a user made by hand on the host, not a mail account of the inventory
    host.users["bob"] = {"uid": "1500", "home": "/home/bob", "shell": "/bin/sh", "group": "bob"}
    host.hashes["bob"] = ROOT_HASH
    with caplog.at_level(logging.WARNING):
        planned = plan(host, RESTORE, data(tmp_path, restore_from=str(backup)))
    assert not [text for text in _texts(planned) if "bob" in text or TAMPERED_HASH in text]
    execute(host, planned)
    assert host.hashes["bob"] == ROOT_HASH
    assert mail not in host.entries()
    assert MESSAGE in host.entries()  # alice's mail is restored all the same
    assert [r for r in caplog.records if "bob" in r.getMessage() and "not restored" in r.getMessage()]


# --- the restore's own stream: only vetted records -------------------------------------------


class _NoHost:
    name = "mail.example.org"
    opened = False

    def input(self, script, what):
        self.opened = True
        raise AssertionError("nothing may stream")


@pytest.mark.parametrize("fields", [{"mode": "4755"}, {"mode": "755"}, {"owner": "x;reboot"}, {"group": "a b"}],
                         ids=["setuid", "an executable file", "a shell owner", "a spaced group"])
def test_send_files_refuses_a_record_nobody_vetted(fields, good_backup):
    _, records = recovery.read_manifest(good_backup)
    record = next(r for r in records if r.path == MESSAGE)
    remote = _NoHost()
    with pytest.raises(recovery.RecoveryError, match=MESSAGE):
        recovery.send_files(remote, good_backup, [replace(record, **fields)], NETBSD_SHELL)
    assert not remote.opened


def test_requeue_quotes_what_it_hands_the_shell():
    """An id is 32 hex digits once vetted; requeue quotes it all the same (and qmail-queue's path)."""
    commands, _ = plan_operation(recovery.requeue, {"messages": [("x;touch pwned", b"m", b"e")],
                                                    "qmail_queue": "/usr/pkg/bin/qmail-queue"}, lambda *_: None)
    base = f"{recovery.REQUEUED_DIR}/x;touch pwned"
    assert commands[-1] == (f"/usr/pkg/bin/qmail-queue <'{base}.msg' 1<'{base}.env' && touch '{base}.done' "
                            f"&& rm -f '{base}.msg' '{base}.env'")


def test_mail_of_an_account_the_host_lacks_yet_is_left_not_refused(good_backup, fresh, tmp_path, caplog):
    """The counterpart: bob is in the inventory and the backup but not yet on the host (no deploy
    since he was added). His Maildir lies nowhere on this host: restore leaves it, with the
    usual warning, and does not take it for a path outside the parts."""
    mail = "/home/bob/Maildir/new/1700000008.M8P8.mail.example.org"

    def change(document, copy):
        _header_account("bob", f"bob:{TAMPERED_HASH}\n")(document, copy)
        adding_dir("/home/bob/Maildir", owner="bob", group="bob")(document, copy)
        adding(mail, b"Subject: bob's\n", owner="bob", group="bob")(document, copy)

    backup = tamper(good_backup, tmp_path, change)
    settings = data(tmp_path, restore_from=str(backup))
    settings["accounts"] = [*settings["accounts"], {"name": "bob", "password_env": "QMAILHOST_TEST_PASSWORD"}]
    host = fresh.copy()
    with caplog.at_level(logging.WARNING):
        execute(host, plan(host, RESTORE, settings))
    assert mail not in host.entries() and MESSAGE in host.entries()
    assert [r for r in caplog.records if "Account bob is in the backup but not on the host" in r.getMessage()]
