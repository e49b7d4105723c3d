"""NetBSD command plans for scheduled restic backups (tasks/backup.py), on the model host
(harness/netbsd_host.py): no NetBSD host, no repository, no network.

On a bare host with backup_repository set, the one pkgin line installs pkgsrc's restic, the deploy
writes the password (never shown), the env file and the script into a root-only directory, and
root's crontab runs the script every few minutes; the next plan is empty. Unsetting the
repository removes the crontab line and the secret files, and nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from harness.netbsd_host import HEALTH_CRON, ROOT_CRONTAB, NetBSDHost, deploy_data
from harness.plan_harness import PROJECT, commands_of, index, plan_deploy, uploaded
from qmailhost import platform as platforms
from qmailhost.backends import services
from qmailhost.settings import SettingsError
from tasks import backup
from tasks.health import SETTINGS_COPY

NETBSD = platforms.netbsd("10")
MINE = "/usr/pkg/etc/qmailhost/backup"
PASSWORD, ENV, SCRIPT = f"{MINE}/password", f"{MINE}/env", f"{MINE}/backup"
SECRET = "a long repository passphrase, never shown"
REPOSITORY = "sftp:bk@nas.example.org:/srv/restic/mail"
CRON_NAME = "# pyinfra-name=qmailhost: back up with restic"
CRON = f"*/5 * * * * {SCRIPT} --if-due >/dev/null 2>&1"
STOP = "Stop backing up with restic (cron)"
REMOVED = [f"Remove the backup {name} file (backup_repository is unset)" for name in ("password", "env", "script")]
LINUX_ONLY = ("apt-get", "systemctl", "/etc/service", "svc ", "sha256sum", "stat -c", "getent shadow", "root:root",
              "/usr/bin/restic", "/var/cache/", "flock ", "sed -i ")


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


@pytest.fixture(scope="module")
def password_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("laptop") / "restic-password"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def settings(password_file: Path, **more) -> dict:
    # hermetic: no backup on this laptop holds anything back (backup_dir of its own)
    return deploy_data(**{"backup_repository": REPOSITORY, "backup_password_file": str(password_file),
                          "backup_dir": "/nonexistent/qmailhost-backups", **more})


def plan(host: NetBSDHost, data: dict) -> list:
    return plan_deploy(data, host.answer)


@pytest.fixture(scope="module")
def bare(password_file):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")
        host = NetBSDHost()
        return host, plan(host, settings(password_file))


@pytest.fixture(scope="module")
def converged(bare):
    host, planned = bare
    host = host.copy()
    host.apply(planned)
    return host


def texts(planned) -> list[str]:
    """Every operation name, command and uploaded file of a plan."""
    found = []
    for name, commands in planned:
        found.append(name)
        found += [c if isinstance(c, str) else f"{c[2]}\n{c[1]}" for c in commands]
    return found


def test_the_netbsd_paths_are_pkgsrcs_restic_and_cron():
    assert backup.PATHS["netbsd"] == backup.Paths("/usr/pkg/bin/restic", ("restic",), "/var/db/qmailhost/restic-cache")
    assert backup.PATHS["debian"].restic == "/usr/bin/restic"
    # rc.d restarts nothing that ends, so the backup repeats from cron there; daemontools, a loop
    assert not services.supervises(NETBSD) and services.supervises(platforms.debian("13"))
    assert backup.files(NETBSD) == {"password": PASSWORD, "env": ENV, "script": SCRIPT,
                                    "ssh_key": f"{MINE}/ssh-key", "known_hosts": f"{MINE}/known_hosts",
                                    "status": "/var/lib/qmailhost/backup-status",
                                    "last_ok": "/var/lib/qmailhost/backup-last-ok"}


def test_a_bare_host_installs_restic_and_writes_root_only_files(bare):
    _, planned = bare
    commands = commands_of(planned)
    install = commands[0]
    assert install.startswith("PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install ") and "restic" in install.split()[4:]
    assert f"mkdir -p {MINE}" in commands and f"chown root:wheel {MINE} && chmod 700 {MINE}" in commands
    for path, mode in ((PASSWORD, "600"), (ENV, "600"), (SCRIPT, "700")):
        temp = f"{path}.qmailhost-new"
        # empty and private before it is filled, then owner and mode, then renamed into place
        assert f"mkdir -p {MINE} && (umask 077 && rm -f {temp} && : > {temp})" in commands
        assert f"chown root:wheel {temp} && chmod {mode} {temp} && mv -f {temp} {path}" in commands
        assert index(commands, f"chown root:wheel {MINE} && chmod 700") < index(commands, f"upload {temp}")
    assert uploaded(planned, PASSWORD) == SECRET + "\n", "the laptop's file, byte for byte"
    assert uploaded(planned, ENV) == (f"RESTIC_REPOSITORY={REPOSITORY}; export RESTIC_REPOSITORY\n"
                                      f"RESTIC_PASSWORD_FILE={PASSWORD}; export RESTIC_PASSWORD_FILE\n"
                                      "RESTIC_CACHE_DIR=/var/db/qmailhost/restic-cache; export RESTIC_CACHE_DIR\n")
    for text in texts(planned):
        for linux in LINUX_ONLY:
            assert linux not in text, f"{linux!r} on a NetBSD host: {text[:200]}"


def test_the_password_is_in_no_command_name_or_log_only_in_its_upload(password_file, caplog):
    host = NetBSDHost()
    with caplog.at_level(logging.DEBUG):
        planned = plan(host, settings(password_file))
    carriers = [c for _, commands in planned for c in commands if SECRET in str(c)]
    assert carriers == [["upload", SECRET + "\n", f"{PASSWORD}.qmailhost-new"]]
    assert not [name for name, _ in planned if SECRET in name]
    assert SECRET not in caplog.text
    # and no digest of it either (a password's digest tests guesses): not even a prefix
    import hashlib
    digest = hashlib.sha256((SECRET + "\n").encode()).hexdigest()
    assert digest[:8] not in caplog.text and not [t for t in texts(planned) if digest[:8] in t]
    assert "secret /usr/pkg/etc/qmailhost/backup/password (its content is never shown)" in caplog.text


def test_the_script_backs_up_what_the_components_declare_with_netbsd_tools(bare):
    _, planned = bare
    script = uploaded(planned, SCRIPT)
    assert "restic=/usr/pkg/bin/restic\n" in script and f". {ENV}\n" in script
    # every part, as the host's shell expands it (~alice), and the accounts' hashes from master.passwd
    assert ("for p in ~alice/Maildir /usr/pkg/etc/qmailhost/dkim/keys /usr/pkg/etc/qmailhost/tls/cert.pem "
            "/usr/pkg/etc/qmailhost/tls/key.pem") in script
    assert "awk -F: -v u=\"$u\" '$1 == u { print $2 }' /etc/master.passwd" in script
    assert ("step backup --tag qmailhost --host mail.example.org --files-from-verbatim \"$dir/paths\" "
            "--exclude-file \"$dir/excludes\"") in script
    assert "*/Maildir) printf '%s/tmp/*\\n%s/.*/tmp/*\\n'" in script, "nothing in a Maildir's tmp/ (the tmp/ kept)"
    assert ("step forget --prune --tag qmailhost --host mail.example.org --group-by host,tags --keep-daily 7 "
            "--keep-weekly 4 --keep-monthly 12 ||") in script
    assert "step check --read-data-subset=5%" in script
    assert "[ $((now - $(epoch backup-last-ok))) -ge 86400 ] && [ $((now - $(epoch backup-last-try))) -ge 3600 ]" \
        in script


def test_a_bare_host_gets_a_cron_line_that_runs_the_script_when_due(bare, converged):
    _, planned = bare
    cron = [commands for name, commands in planned if name == "Back up with restic when due (cron, every 5 min)"]
    assert len(cron) == 1
    temp = cron[0][0].rsplit(" ", 1)[1]
    assert cron[0] == [f"crontab -l -u root > {temp}", f"echo '' >> {temp}", f"echo '{CRON_NAME}' >> {temp}",
                       f"echo '{CRON}' >> {temp}", f"crontab -u root {temp}"]
    assert index(commands_of(planned), f"mv -f {SCRIPT}.qmailhost-new {SCRIPT}") < \
        index(commands_of(planned), f"crontab -u root {temp}"), "the script is in place before cron runs it"
    assert converged.crontab == [*ROOT_CRONTAB, "", CRON_NAME, CRON, *HEALTH_CRON], "the base system's lines are kept"
    assert not [t for t in texts(planned) if "qmailhost-backup" in t], "no supervised loop on NetBSD"


def test_a_converged_host_plans_nothing_and_its_files_are_root_only(converged, password_file):
    host = converged.copy()
    assert plan(host, settings(password_file)) == []
    assert (host.dirs[MINE]["mode"], host.dirs[MINE]["user"], host.dirs[MINE]["group"]) == (700, "root", "wheel")
    for path, mode in ((PASSWORD, "600"), (ENV, "600"), (SCRIPT, "700")):
        assert (host.files[path]["mode"], host.files[path]["user"], host.files[path]["group"]) == (mode, "root", "wheel")
    assert host.contents[PASSWORD] == SECRET + "\n"


def test_a_new_password_replaces_only_the_password_file(converged, tmp_path, caplog):
    host = converged.copy()
    other = tmp_path / "other"
    other.write_text("another passphrase\n")
    other.chmod(0o600)
    with caplog.at_level(logging.DEBUG):
        planned = plan(host, settings(other))
    assert [name for name, _ in planned] == ["Install the backup repository's password"]
    assert "another passphrase" not in caplog.text
    host.apply(planned)
    assert host.contents[PASSWORD] == "another passphrase\n" and plan(host, settings(other)) == []


def test_rest_repositories_get_no_retention_and_a_shorter_interval_polls_more_often(converged, password_file):
    host = converged.copy()
    planned = plan(host, settings(password_file, backup_repository="rest:https://bk:pw@backup.example.net/mail",
                                  backup_every="2m", backup_keep={"daily": 3, "weekly": 0}))
    script = uploaded(planned, SCRIPT)
    assert "step forget" not in script, "an append-only server deletes nothing while forget exits 0"
    assert "[ $((now - $(epoch backup-last-ok))) -ge 120 ] && [ $((now - $(epoch backup-last-try))) -ge 120 ]" \
        in script
    env = uploaded(planned, ENV)
    assert "RESTIC_REPOSITORY=rest:https://bk:pw@backup.example.net/mail;" in env
    # another repository: its record starts afresh (a first backup at once, no old outcome shown)
    afresh = next(commands for name, commands in planned if name == "Start the backup record afresh "
                  "(backup_repository changed)")
    assert afresh == ["rm -f /var/lib/qmailhost/backup-status /var/lib/qmailhost/backup-last-ok "
                      "/var/lib/qmailhost/backup-last-try /var/lib/qmailhost/backup-last-check"]
    assert not [name for name, _ in planned if "bk:pw" in name], "the repository's credentials are no name"
    host.apply(planned)
    assert host.crontab[-4] == f"*/2 * * * * {SCRIPT} --if-due >/dev/null 2>&1"
    planned = plan(host, settings(password_file, backup_keep={"daily": 3, "weekly": 0}))
    forget = "step forget --prune --tag qmailhost --host mail.example.org --group-by host,tags --keep-daily 3 "
    assert f"{forget}--keep-monthly 12 ||" in uploaded(planned, SCRIPT), "a count of 0 is left out, not passed to restic"


def test_unsetting_the_repository_retires_the_cron_line_and_the_secret_files(converged, password_file):
    host = converged.copy()
    off = deploy_data(backup_dir="/nonexistent/qmailhost-backups")
    planned = plan(host, off)
    assert [name for name, _ in planned] == [STOP, *REMOVED, SETTINGS_COPY]
    assert [c for name, c in planned if name in REMOVED] == [[f"rm -f {PASSWORD}"], [f"rm -f {ENV}"], [f"rm -f {SCRIPT}"]]
    assert not [c for c in commands_of(planned) if "restic" in c and "crontab" not in c], "the repository is untouched"
    host.apply(planned)
    assert CRON not in host.crontab and not {PASSWORD, ENV, SCRIPT} & set(host.files)
    assert plan(host, off) == []


def test_a_host_that_never_had_backups_plans_nothing_for_them():
    host = NetBSDHost()
    planned = plan(host, deploy_data(backup_dir="/nonexistent/qmailhost-backups"))
    assert not [name for name, _ in planned if "backup" in name.lower() or "restic" in name.lower()]
    assert "restic" not in commands_of(planned)[0].split()


def test_a_bad_setting_is_refused_before_the_host_is_asked(tmp_path):
    loose = tmp_path / "loose"
    loose.write_text(SECRET)
    loose.chmod(0o644)
    asked = []

    def answer(name, kwargs):
        asked.append(name)
        return NetBSDHost().answer(name, kwargs)

    with pytest.raises(SettingsError) as refused:
        plan_deploy(deploy_data(backup_repository=REPOSITORY, backup_password_file=str(loose)), answer)
    assert refused.value.setting == "backup_password_file" and f"chmod 600 {loose}" in str(refused.value)
    assert SECRET not in str(refused.value) and asked == []


def test_a_rebuilt_host_whose_repository_holds_its_snapshots_backs_up_only_after_restore(password_file, monkeypatch):
    """A first deploy whose repository already holds this host's snapshots (the disk died): the
    bare host's own first backup would become the newest snapshot, and retention would forget
    the ones holding the mail; so its backups wait for restore.py, which lets them run."""
    from qmailhost.recovery import snapshots

    held = snapshots.Holding("snapshot 4dde7f7c in sftp:bk@nas.example.org:/srv/restic/mail", [], bytes)
    monkeypatch.setattr(backup, "newest_snapshot", lambda settings, platform, data, name: held)
    host = NetBSDHost()
    planned = plan_deploy(settings(password_file), host.answer)
    names = [name for name, _ in planned]
    hold = "Hold scheduled backups until restore.py (the repository holds this host's snapshots)"
    assert names.index(hold) < names.index("Back up with restic when due (cron, every 5 min)")
    assert next(commands for name, commands in planned if name == hold) == [
        "mkdir -p /var/lib/qmailhost && printf '%s\\n' 'snapshot 4dde7f7c in sftp:bk@nas.example.org:/srv/restic/mail' "
        "> /var/lib/qmailhost/restore-pending"]
    assert "if [ -f /var/lib/qmailhost/restore-pending ]; then" in uploaded(planned, SCRIPT)
    host.apply(planned)
    assert hold not in [name for name, _ in plan(host, settings(password_file))], "asked on the first deploy only"


def test_an_sftp_repository_gets_a_key_made_on_the_host_and_its_line_shown_once(bare, converged, password_file):
    _, planned = bare
    names = [name for name, _ in planned]
    make = "Make the host's SSH key for the sftp repository"
    show = "Show the line that lets the host's key in on the sftp target"
    assert names.index(make) < names.index(show) < names.index("Back up with restic when due (cron, every 5 min)")
    assert dict(planned)[make] == [f"ssh-keygen -q -t ed25519 -N '' -C restic@mail.example.org -f {MINE}/ssh-key"]
    assert dict(planned)[show][0][:2] == ["call", "_show_key"]
    script = uploaded(planned, SCRIPT)
    assert (f"sftp='ssh -i {MINE}/ssh-key -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new "
            f"-o UserKnownHostsFile={MINE}/known_hosts -o ConnectTimeout=15 bk@nas.example.org -s sftp'") in script
    assert '"$restic" ${sftp:+-o "sftp.command=$sftp"} "$@"' in script
    assert converged.files[f"{MINE}/ssh-key"]["mode"] == "600"
    assert not [name for name, _ in plan(converged.copy(), settings(password_file)) if name in (make, show)]


def test_with_backup_queue_netbsd_stops_qmail_send_through_rc_d_for_the_copy(password_file):
    parsed = backup.Settings.from_host_data(settings(password_file, backup_queue=True),
                                            inventory_name="mail.example.org")
    script = backup.script(NETBSD, parsed)
    assert ("if /etc/rc.d/qmailsend onestatus >/dev/null 2>&1; then /etc/rc.d/qmailsend onestop; fi || "
            "fail ") in script
    assert "trap '[ -z \"$paused\" ] || { /etc/rc.d/qmailsend onestatus >/dev/null 2>&1 || /etc/rc.d/qmailsend start; }" \
        in script, "started again however the run ends"
    assert "( cd /var/qmail/queue && cp -Rp mess info local remote todo \"$copy.new\"/ )" in script


def test_backup_py_without_a_repository_says_how_to_set_one_and_plans_nothing():
    """backup.py backs up only through the host's restic: without backup_repository, one line
    naming it and the way (the laptop can be the target), before any operation."""
    host = NetBSDHost()
    with pytest.raises(SettingsError) as refused:
        plan_deploy(deploy_data(backup_dir="/nonexistent/qmailhost-backups"), host.answer,
                    deploy=PROJECT / "backup.py")
    assert refused.value.setting == "backup_repository"
    assert "\n" not in str(refused.value) and "sftp:you@laptop:/path" in str(refused.value)
    assert host.sent == []
