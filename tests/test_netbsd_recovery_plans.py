"""restore.py on the model NetBSD host (harness/netbsd_host.py), loaded as the pyinfra CLI
loads it (harness/plan_harness.py plan_deploy), with recovery's Remote (the ssh side)
answered by the model instead of ssh: the exact scripts and streams it sends (find,
awk over master.passwd, openssl dgst, pax), no Linux-only command anywhere, and a
restore onto a freshly deployed host of a backup directory of the older laptop format
(harness/old_backups.py, made from a used model host) that puts back the messages, the
hashes, the TLS pair and a pending message; a second restore plans nothing. What
NetBSD's own tools then do is the model's word, not the host's.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from pyinfra.api import FunctionCommand

from harness import old_backups, plan_harness
from harness.netbsd_host import MTIME_NS, NetBSDHost, vis
from harness.plan_harness import PROJECT, plan_deploy
from qmailhost import recovery
from qmailhost.platform import DEBIAN_PASSWORD_APPLY, DEBIAN_SHELL, NETBSD_PASSWORD_APPLY, debian, netbsd
from qmailhost.settings import Settings

RESTORE = PROJECT / "restore.py"
# What must never reach a NetBSD host: GNU find, tar and du, Linux's shadow tools, GNU stat.
LINUX_ONLY = ("getent shadow", "-printf", "sha256sum", "chpasswd -e", "stat -c", "du -sb", "tar -", "tar --",
              "--null", "--verbatim-files-from", "--skip-old-files", "--ignore-failed-read", "--no-recursion",
              "--same-owner", "-T -", "/etc/shadow", "/var/qmail/bin/")
MAILDIR = "/home/alice/Maildir"
ARCHIVE = "/var/lib/qmailhost/tmda-archive"
TLS = "/usr/pkg/etc/qmailhost/tls"
KEYS = "/usr/pkg/etc/qmailhost/dkim/keys"  # tasks/dkim.py's keys (the deploy made one for example.org)
MESSAGES = {  # path -> (content, mtime in ns)
    f"{MAILDIR}/new/1700000001.M1P1.mail.example.org": (b"Subject: one\n\nfirst\n", 1_700_000_001_123_456_789),
    f"{MAILDIR}/cur/1700000002.M2P2.mail.example.org:2,S": (b"Subject: two\n\nseen\n", 1_700_000_002_000_000_001),
    f"{MAILDIR}/.Sent Items/cur/1700000003.M3P3.name with spaces \u00e9:2,RS": (b"Subject: sent\n\n\xe9\n",
                                                                             1_700_000_003_999_999_999),
    f"{MAILDIR}/cur/1700000004.M4P4.odd\tname\\with\nnewline:2,": (b"Subject: odd\n\nname\n", 1_700_000_004_500_000_000),
    f"{ARCHIVE}/alice/1699999999.12345.msg": (b"Subject: archived\n\nby TMDA\n", 1_699_999_999_000_000_000),
}
IN_DELIVERY = f"{MAILDIR}/tmp/1700000009.M9P9.mail.example.org"
TLS_CHANGED = ("Reload dovecot (the TLS pair changed)", "Restart stunnel (the TLS pair changed)")  # _if: pair restored


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


def data(tmp_path: Path, **settings) -> dict:
    return {"hostname": "mail.example.org", "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}],
            "backup_dir": str(tmp_path / "backups"), **settings}


def deployed() -> NetBSDHost:
    host = NetBSDHost()
    host.apply(plan_deploy({"hostname": "mail.example.org",
                            "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}]}, host.answer))
    return host


def with_mail(host: NetBSDHost) -> NetBSDHost:
    """The deployed host after some use: messages in cur/, new/ and a folder, one still being
    delivered (tmp/), the TMDA archive of an earlier retirement, a pending remote message."""
    host.put_dir(f"{MAILDIR}/.Sent Items", "alice", "alice")
    for sub in ("cur", "new", "tmp"):
        host.put_dir(f"{MAILDIR}/.Sent Items/{sub}", "alice", "alice")
    host.put_dir(ARCHIVE)
    host.put_dir(f"{ARCHIVE}/alice", "alice", "wheel", "750")
    for path, (content, mtime) in MESSAGES.items():
        host.put_mail(path, content, mtime_ns=mtime)
    host.put_mail(IN_DELIVERY, b"Subject: half\n")
    host.queue.update({"mess/0/100": b"Subject: pending\n\nwaiting\n", "info/0/100": b"Falice@mail.example.org\0",
                       "remote/0/100": b"Tsomeone@example.invalid\0"})
    return host


def plan(host: NetBSDHost, deploy: Path, settings: dict) -> list[tuple[str, list]]:
    """backup.py or restore.py planned on HOST, the CLI way, with recovery's Remote answered by
    the model; python.call and restore_files plan FunctionCommands (run on the laptop), kept
    as they are. Like pyinfra (which evaluates _if only while executing), the stunnel restart
    and the Dovecot reload run only when the TLS pair's operations change something."""
    parse = plan_harness.parse_commands

    def parse_keeping_calls(commands):
        return [c if isinstance(c, FunctionCommand) else parse([c])[0] for c in commands]

    with mock.patch.object(recovery, "remote_for", lambda _data, name: host.remote(name)), \
            mock.patch.object(plan_harness, "parse_commands", parse_keeping_calls):
        planned = plan_deploy(settings, host.answer, deploy=deploy)
    names = {name for name, _ in planned}
    tls_changed = bool(names & {"Restore the TLS certificate", "Restore the TLS key"})
    return [(name, commands) for name, commands in planned
            if name not in TLS_CHANGED or tls_changed]


def execute(host: NetBSDHost, planned: list[tuple[str, list]]) -> None:
    """Run PLANNED against the model: FunctionCommands here (they talk to the host through its
    remote()), everything else applied by the model."""
    for name, commands in planned:
        for command in commands:
            if isinstance(command, FunctionCommand):
                command.function(*command.args, **command.kwargs)
            else:
                host.apply([(name, [command])])


def netbsd_only(host: NetBSDHost, planned=()) -> None:
    texts = [script for _, script, _ in host.sent]
    texts += [c if isinstance(c, str) else c[2] for _, commands in planned for c in commands
              if not isinstance(c, FunctionCommand)]
    for text in texts:
        for linux in LINUX_ONLY:
            assert linux not in text, f"{linux!r} in a NetBSD recovery command: {text[:300]}"


def old_backup(host: NetBSDHost, settings: dict, queue: bool = False) -> Path:
    """A backup of HOST in the older laptop format, into SETTINGS' backup_dir (its path)."""
    parsed = Settings.from_host_data(settings, inventory_name="mail.example.org")
    return old_backups.write(host.remote(), parsed, netbsd("10"), Path(settings["backup_dir"]), queue=queue)


def newest(tmp_path: Path) -> tuple[Path, dict, list[recovery.Record]]:
    directory = recovery.backups_in(tmp_path / "backups")[-1]
    header, records = recovery.read_manifest(directory)
    return directory, header, records


# --- the scripts and streams, exactly


HOST_VIEW = r"""
for u in alice; do
  h=$(getent passwd "$u" | cut -d: -f6)
  [ -n "$h" ] || continue
  printf 'A\t%s\t%s\0' "$u" "$h"
  printf 'H\t%s\t%s\0' "$u" "$(awk -F: -v u="$u" '$1 == u { print $2 }' /etc/master.passwd | tr -d '\n' | openssl dgst -sha256 -r | cut -c1-64)"
done
for p in ~alice/Maildir /usr/pkg/etc/qmailhost/dkim/keys /var/lib/qmailhost/tmda-archive; do printf 'X\t%s\0' "$p"; [ -e "$p" ] && find "$p" -exec printf 'P\t%s\0' {} +; done
[ -d /var/lib/qmailhost/requeued ] && find /var/lib/qmailhost/requeued -type f -exec printf 'R\t%s\0' {} +
for f in $(find /var/qmail/queue/mess -type f 2>/dev/null); do printf 'M\t%s\0' "$(openssl dgst -sha256 -r < "$f" | cut -c1-64)"; done
[ -x /usr/pkg/bin/qmail-queue ] && printf 'Q\0'
true
"""  # noqa: E501 (a script, as sent)


def test_stat_names_come_back_from_vis():
    for name in ("/home/alice/Maildir/cur/plain:2,S", "/a b/\u00e9\u65e5/x\ty\\z\nw\r\x07\x7f", "/\\001 not octal"):
        encoded = vis(name.encode())
        assert "\n" not in encoded and "\t" not in encoded and " " not in encoded
        assert recovery.unvis(encoded) == name


def test_restore_onto_a_freshly_deployed_host(tmp_path):
    old = with_mail(deployed())
    old_backup(old, data(tmp_path), queue=True)
    directory, _, records = newest(tmp_path)
    assert [r.kind for r in records].count("message") == 1
    assert IN_DELIVERY not in {r.path for r in records}  # a delivery in progress is never carried

    new = deployed()  # the disk died: a bare host, deployed (new salts, a new TLS pair)
    new.put_mail(f"{MAILDIR}/new/1800000000.M1P1.after-the-rebuild", b"Subject: new\n\nkept\n")
    assert new.hashes["alice"] != old.hashes["alice"]
    assert new.tree[f"{TLS}/key.pem"]["data"] != old.tree[f"{TLS}/key.pem"]["data"]
    planned = plan(new, RESTORE, data(tmp_path))
    assert [(what, script) for what, script, _ in new.sent] == [("listing what the host already has", HOST_VIEW)]
    assert [name for name, _ in planned] == [
        "Restore missing messages and files", "Restore the password hashes", "Restore the TLS certificate",
        "Restore the TLS key", "Reload dovecot (the TLS pair changed)", "Restart stunnel (the TLS pair changed)",
        "Requeue the pending messages"]
    commands = dict(planned)
    assert [c.function for c in commands["Restore missing messages and files"]] == [recovery.send_files]
    hashes_file = "/root/.qmailhost-chpasswd-restore"
    assert commands["Restore the password hashes"] == [
        f"umask 077 && : > {hashes_file}", ["upload", f"alice:{old.hashes['alice']}\n", hashes_file],
        NETBSD_PASSWORD_APPLY.format(file=hashes_file)]
    assert commands["Restore the TLS key"][0].endswith(f"(umask 077 && rm -f {TLS}/key.pem.qmailhost-new "
                                                       f"&& : > {TLS}/key.pem.qmailhost-new)")
    assert commands["Restore the TLS key"][1:] == [
        ["upload", old.tree[f"{TLS}/key.pem"]["data"].decode(), f"{TLS}/key.pem.qmailhost-new"],
        f"chown root:qmailtls {TLS}/key.pem.qmailhost-new && chmod 640 {TLS}/key.pem.qmailhost-new "
        f"&& mv -f {TLS}/key.pem.qmailhost-new {TLS}/key.pem"]
    stamp = "/var/lib/qmailhost/stamps/service-stunnel"
    assert commands["Restart stunnel (the TLS pair changed)"] == [
        "if /etc/rc.d/stunnel onestatus >/dev/null 2>&1; then /etc/rc.d/stunnel restart; fi",
        # pkgsrc's stunnel script cannot reload; its restart stamp holds the certificate, measured again
        f"s={stamp}; if [ -f $s ]; then echo \"$(cut -d' ' -f1 $s) $(openssl dgst -sha256 -r < {TLS}/cert.pem "
        "| cut -c1-64)\" > $s.new && mv -f $s.new $s; fi"]
    stamp = "/var/lib/qmailhost/stamps/service-dovecot-h"
    assert commands["Reload dovecot (the TLS pair changed)"] == [
        "if /etc/rc.d/dovecot onestatus >/dev/null 2>&1; then /etc/rc.d/dovecot reload; fi",
        # Dovecot's reload stamp holds the certificate it re-read, measured again
        f"s={stamp}; if [ -f $s ]; then echo \"$(cut -d' ' -f1 $s) $(openssl dgst -sha256 -r < {TLS}/cert.pem "
        "| cut -c1-64)\" > $s.new && mv -f $s.new $s; fi"]
    requeued = commands["Requeue the pending messages"]
    assert requeued[0] == "mkdir -p /var/lib/qmailhost/requeued && chmod 700 /var/lib/qmailhost/requeued"
    assert requeued[-1].startswith("/usr/pkg/bin/qmail-queue </var/lib/qmailhost/requeued/")
    netbsd_only(new, planned)

    new.sent.clear()
    execute(new, planned)
    (what, script, stream), = new.sent
    assert (what, script) == ("restoring files", "cd / && pax -r -k -pe")  # the model checks it is ustar
    for path, (content, mtime) in MESSAGES.items():  # back, with owner and mode; ustar: whole seconds
        entry = new.entries()[path]
        assert (entry["data"], entry["mode"], entry["user"], entry["mtime_ns"]) == (
            content, "600", "alice", mtime // 10**9 * 10**9), path
    assert new.entries()[f"{MAILDIR}/.Sent Items"]["mode"] == "700"
    assert (new.entries()[f"{ARCHIVE}/alice"]["mode"], new.entries()[f"{ARCHIVE}/alice"]["group"]) == ("750", "wheel")
    assert IN_DELIVERY not in new.entries()
    assert new.entries()[f"{MAILDIR}/new/1800000000.M1P1.after-the-rebuild"]["data"] == b"Subject: new\n\nkept\n"
    assert new.hashes["alice"] == old.hashes["alice"]
    for name in ("cert.pem", "key.pem"):
        assert new.entries()[f"{TLS}/{name}"]["data"] == old.tree[f"{TLS}/{name}"]["data"]
    assert new.queue["mess/0/1000"] == old.queue["mess/0/100"]
    assert new.queue["todo/1000"] == b"Falice@mail.example.org\0Tsomeone@example.invalid\0\0"
    netbsd_only(new)

    # Converged: a second restore plans nothing; the next deploy keeps the restored hash (it
    # still verifies the inventory's password) and the restored pair.
    assert plan(new, RESTORE, data(tmp_path)) == []
    assert plan_deploy({"hostname": "mail.example.org",
                        "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}]}, new.answer) == []
    manifest = json.loads((directory / recovery.MANIFEST).read_text())
    assert manifest["format"] == recovery.FORMAT


def test_what_is_backed_up_comes_from_the_components():
    settings = Settings.from_host_data({"hostname": "mail.example.org", "accounts": [
        {"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"},
        {"name": "bob", "password_env": "QMAILHOST_TEST_PASSWORD"}]})
    platform = netbsd("10")
    assert recovery.part_paths(recovery.backup_parts(platform), settings, platform) == [
        "~alice/Maildir", "~bob/Maildir", KEYS, f"{TLS}/cert.pem", f"{TLS}/key.pem", ARCHIVE]
    from tasks import acme, tls

    assert [part.restore for part in recovery.backup_parts(platform)] == [None, acme.restore, None, tls.restore, None]
    assert recovery.part_paths(recovery.generic_parts(platform), settings, platform) == [
        "~alice/Maildir", "~bob/Maildir", KEYS, ARCHIVE]  # the keys: put back as files, never overwriting
    # ~user stays unquoted (the host's sh expands it), the rest is quoted.
    assert recovery.shell_word("~alice/Mail dir") == "~alice/'Mail dir'"
    assert recovery.shell_word("/var/lib/it's") == "'/var/lib/it'\"'\"'s'"
    with pytest.raises(recovery.RecoveryError):
        recovery.shell_word("~$(reboot)/Maildir")


def test_debian_keeps_its_commands():
    """The Debian dialect is the one tests/test_backup.py's drill drives: its tools, as before."""
    shell, platform = DEBIAN_SHELL, debian("13")
    assert (shell.tar_extract, shell.tar_format) == ("tar -C / --skip-old-files --same-owner -xpf -", "pax")
    script = recovery.host_script(["alice"], ["~alice/Maildir", ARCHIVE], platform)
    assert ("printf 'H\\t%s\\t%s\\0' \"$u\" \"$(getent shadow \"$u\" | cut -d: -f2 | tr -d '\\n' | sha256sum "
            "| cut -c1-64)\"") in script
    assert "find \"$p\" -printf 'P\\t%p\\0'" in script and "[ -x /var/qmail/bin/qmail-queue ]" in script
    assert DEBIAN_PASSWORD_APPLY.format(file="/root/.qmailhost-chpasswd-restore") == (
        "chmod 600 /root/.qmailhost-chpasswd-restore && chpasswd -e < /root/.qmailhost-chpasswd-restore; "
        "status=$?; rm -f /root/.qmailhost-chpasswd-restore; exit $status")
    assert platform.qmail_bin == f"{platform.qmail_home}/bin"
    assert MTIME_NS % 10**9  # (the model's default mtimes carry nanoseconds)
