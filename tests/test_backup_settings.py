"""tasks/backup.py without a host: its settings (each bad value one line naming the setting),
the backup_age check on real status files read by its own shell command, and the backup
script itself run under sh against a stand-in restic that records what it was asked."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time

import pytest

from qmailhost.checks import ERROR, OK, SKIPPED, WARNING, Target
from qmailhost.platform import debian
from qmailhost.settings import Settings, SettingsError
from tasks import backup

SECRET = "correct horse battery staple, the repository's"


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "restic-password"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def parse(**data) -> Settings:
    return Settings.from_host_data({"hostname": "mail.example.org",
                                    "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}],
                                    **data})


def test_backups_are_off_by_default_with_the_issues_defaults():
    settings = parse()
    assert settings.backup_repository is None and settings.backup_password_file is None
    assert settings.backup_every == 86400
    assert settings.backup_keep == {"daily": 7, "weekly": 4, "monthly": 12}


@pytest.mark.parametrize("repository", ["sftp:bk@nas.example.org:/srv/restic", "sftp://bk@nas:2222//srv/r",
                                        "rest:https://bk:pw@backup.example.net/mail", "rest:http://127.0.0.1:8000/",
                                        "s3:s3.amazonaws.com/bucket/mail", "b2:bucket:mail", "/mnt/second-disk/restic"])
def test_each_kind_of_repository_is_taken(repository, password_file):
    settings = parse(backup_repository=repository, backup_password_file=str(password_file))
    assert settings.backup_repository == repository and settings.backup_password_file == password_file
    assert SECRET not in repr(settings), "the password is read at deploy time, never held in the settings"


@pytest.mark.parametrize("every, seconds", [("1m", 60), ("30m", 1800), ("6h", 21600), ("2d", 172800), ("7d", 604800)])
def test_durations(every, seconds):
    assert parse(backup_every=every).backup_every == seconds


def test_the_environment_named_goes_into_the_hosts_env_file_and_nowhere_else(monkeypatch, password_file):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalr XUtnFEMI/K7MDENG")
    settings = parse(backup_repository="s3:s3.amazonaws.com/bucket/mail", backup_password_file=str(password_file),
                     backup_environment=["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"])
    env = backup.env_file(debian("13"), settings)
    assert "AWS_ACCESS_KEY_ID=AKIDEXAMPLE; export AWS_ACCESS_KEY_ID\n" in env
    assert "AWS_SECRET_ACCESS_KEY='wJalr XUtnFEMI/K7MDENG'; export AWS_SECRET_ACCESS_KEY\n" in env
    assert "AKIDEXAMPLE" not in backup.script(debian("13"), settings)


def test_retention_through_an_append_only_server_takes_a_way_that_may_delete(password_file):
    settings = parse(backup_repository="rest:https://u:pw@vault/mail/", backup_password_file=str(password_file),
                     backup_prune=True, backup_prune_repository="rest:https://pruner:pw@vault:8002/mail/")
    assert settings.backup_prune and settings.backup_prune_repository == "rest:https://pruner:pw@vault:8002/mail/"


def test_a_partial_keep_takes_the_other_defaults_and_zero_is_allowed():
    assert parse(backup_keep={"daily": 3, "weekly": 0}).backup_keep == {"daily": 3, "weekly": 0, "monthly": 12}


@pytest.mark.parametrize("data, setting, says", [
    ({"backup_repository": "ftp://nas/restic"}, "backup_repository", "'ftp://nas/restic' is not a restic repository"),
    ({"backup_repository": "relative/path"}, "backup_repository", "is not a restic repository"),
    ({"backup_repository": ""}, "backup_repository", "is not a restic repository"),
    ({"backup_repository": "/srv/restic\nrm -rf /"}, "backup_repository", "is not a restic repository"),
    ({"backup_repository": "rest:https://h/\x1b[31m"}, "backup_repository", "is not a restic repository"),
    ({"backup_repository": "/srv/my restic"}, "backup_repository", "is not a restic repository"),
    ({"backup_repository": ["/srv/restic"]}, "backup_repository", "is not a restic repository"),
    ({"backup_repository": "s3:"}, "backup_repository", "is not a restic repository"),
    ({"backup_repository": "/srv/restic", "backup_password_file": None}, "backup_password_file",
     "backup_repository is set but no password file is"),
    ({"backup_password_file": "MISSING"}, "backup_password_file", "cannot be read (No such file or directory)"),
    ({"backup_password_file": "LOOSE"}, "backup_password_file", "is readable by others (mode 640); chmod 600"),
    ({"backup_password_file": "EMPTY"}, "backup_password_file", "is empty"),
    ({"backup_password_file": "DIR"}, "backup_password_file", "is not a file"),
    ({"backup_every": "0m"}, "backup_every", "is not a duration from 1m to 7d"),
    ({"backup_every": "30s"}, "backup_every", "is not a duration"),
    ({"backup_every": "8d"}, "backup_every", "is not a duration"),
    ({"backup_every": 3600}, "backup_every", "is not a duration"),
    ({"backup_every": "6h\n"}, "backup_every", "is not a duration"),
    ({"backup_every": "-1h"}, "backup_every", "is not a duration"),
    ({"backup_keep": {"yearly": 2}}, "backup_keep", "'yearly' is not daily, weekly or monthly"),
    ({"backup_keep": {"daily": -1}}, "backup_keep", "daily is -1, not a whole number from 0"),
    ({"backup_keep": {"weekly": True}}, "backup_keep", "weekly is True"),
    ({"backup_keep": {"monthly": "12"}}, "backup_keep", "monthly is '12'"),
    ({"backup_keep": [7, 4, 12]}, "backup_keep", "must be a mapping, not list"),
    ({"backup_keep": {"daily": 0, "weekly": 0, "monthly": 0}}, "backup_keep", "keeps nothing"),
    ({"backup_repository": "/srv/restic", "backup_password_file": "GOOD", "backup_environment": ["QMAILHOST_TEST_UNSET_KEY"]}, "backup_environment",
     "QMAILHOST_TEST_UNSET_KEY is not set in this laptop's environment; export QMAILHOST_TEST_UNSET_KEY=..."),
    ({"backup_repository": "/srv/restic", "backup_password_file": "GOOD", "backup_environment": ["aws_secret"]}, "backup_environment",
     "'aws_secret' is not a variable restic reads"),
    ({"backup_repository": "/srv/restic", "backup_password_file": "GOOD", "backup_environment": ["RESTIC_PASSWORD"]}, "backup_environment", "(qmailhost sets it)"),
    ({"backup_repository": "/srv/restic", "backup_password_file": "GOOD", "backup_environment": "AWS_ACCESS_KEY_ID"}, "backup_environment",
     "is not a list of variable names"),
    ({"backup_prune": True}, "backup_prune", "backup_repository is not set"),
    ({"backup_repository": "rest:https://u:pw@h/mail", "backup_password_file": "GOOD", "backup_prune": True},
     "backup_prune_repository", "rest:https://h/mail is a rest: server, which may be append-only"),
    ({"backup_prune": "yes"}, "backup_prune", "'yes' is not true or false"),
    ({"backup_prune_repository": "ftp://h/x"}, "backup_prune_repository", "is not a restic repository"),
    ({"backup_repository": None, "backup_environment": ["QMAILHOST_TEST_KEY"]}, "backup_environment",
     "is set but backup_repository is not"),
])
def test_bad_values_are_one_line_naming_the_setting(tmp_path, data, setting, says):
    files = {"MISSING": tmp_path / "missing", "LOOSE": tmp_path / "loose", "EMPTY": tmp_path / "empty",
             "DIR": tmp_path, "GOOD": tmp_path / "good"}
    files["GOOD"].write_text(SECRET)
    files["GOOD"].chmod(0o600)
    files["LOOSE"].write_text(SECRET)
    files["LOOSE"].chmod(0o640)
    files["EMPTY"].write_text("\n")
    files["EMPTY"].chmod(0o600)
    data = {key: str(files[value]) if isinstance(value, str) and value in files else value
            for key, value in data.items()}
    with pytest.raises(SettingsError) as refused:
        parse(**data)
    message = str(refused.value)
    assert refused.value.setting == setting and message.startswith(f"setting {setting!r}: ")
    assert says in message and "\n" not in message and SECRET not in message


# --- the backup_age check --------------------------------------------------------------------


def target(tmp_path, every="6h", repository="/srv/restic", status=None, last_ok=None, set_up_ago=0,
           opened: str | None = None, opened_with: str | None = None) -> Target:
    """The host as the backup_age check sees it: its status files in TMP_PATH, and a repository
    the laptop's restic makes there (or OPENED, with the password file OPENED_WITH)."""
    platform = debian("13")
    mine = backup.files(platform)
    for name, text in (("status", status), ("last_ok", last_ok)):
        if text is not None:
            path = tmp_path / mine[name].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    tmp_path.mkdir(parents=True, exist_ok=True)
    password = tmp_path / "pw"
    password.write_text("x")
    password.chmod(0o600)
    # The check opens the repository first, with the laptop's own restic standing in for the host's.
    env = tmp_path / mine["env"].lstrip("/")
    env.parent.mkdir(parents=True, exist_ok=True)
    if opened is None and not (tmp_path / "repository").exists():
        made = subprocess.run(["restic", "init", "-q", "-r", str(tmp_path / "repository"), "--password-file",
                               str(password)],
                              capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    opened = opened or str(tmp_path / "repository")
    env.write_text(f"RESTIC_REPOSITORY={shlex.quote(opened)}; export RESTIC_REPOSITORY\n"
                   f"RESTIC_PASSWORD_FILE={shlex.quote(opened_with or str(password))}; export RESTIC_PASSWORD_FILE\n")
    os.utime(env, (time.time() - set_up_ago, time.time() - set_up_ago))
    settings = parse(backup_repository=repository, backup_password_file=str(password), backup_every=every) \
        if repository else parse()

    def shell(command: str) -> tuple[bool, str]:
        for path in (mine["status"], mine["last_ok"], mine["env"]):
            command = command.replace(path, str(tmp_path) + path)
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
        return result.returncode == 0, result.stdout

    return Target(settings, platform, "192.0.2.1", shell)


def ago(seconds: int) -> str:
    return str(int(time.time()) - seconds)


def test_the_check_skips_without_a_repository(tmp_path):
    assert backup.check_backup_age(target(tmp_path, repository=None)) == (SKIPPED, "backup_repository is not set")


def test_a_recent_snapshot_is_ok_with_its_id_and_age(tmp_path):
    level, reason = backup.check_backup_age(target(
        tmp_path, status="ok\t2026-12-07T03:00:00Z\t4dde7f7c19aa\n", last_ok=ago(2 * 3600)))
    assert (level, reason) == (OK, "snapshot 4dde7f7c, 2h 0m old")


def test_a_snapshot_older_than_twice_backup_every_warns_and_past_7_days_errors(tmp_path):
    level, reason = backup.check_backup_age(target(tmp_path, status="ok\tT\tabcdef0123\n", last_ok=ago(13 * 3600)))
    assert level == WARNING and "13h 0m old, more than twice backup_every" in reason
    level, reason = backup.check_backup_age(target(tmp_path, every="7d", status="ok\tT\tabcdef0123\n",
                                                   last_ok=ago(8 * 86400)))
    assert level == ERROR and "8d 0h old, more than 7 days" in reason


def test_a_failed_run_is_an_error_with_restics_reason(tmp_path):
    level, reason = backup.check_backup_age(target(
        tmp_path, status="failed\t2026-12-07T03:00:00Z\tFatal: wrong password or no key found\n", last_ok=ago(600)))
    assert level == ERROR
    assert reason == ("the backup at 2026-12-07T03:00:00Z failed: Fatal: wrong password or no key found; "
                      "the newest snapshot is 10m old")


def test_no_snapshot_is_fine_at_first_and_an_error_after_the_first_interval(tmp_path):
    level, reason = backup.check_backup_age(target(tmp_path, every="30m", set_up_ago=60))
    assert level == OK and reason.startswith("no snapshot yet: the first backup is due within ")
    level, reason = backup.check_backup_age(target(tmp_path / "late", every="30m", set_up_ago=3630))
    assert level == ERROR and reason.startswith("no backup yet, 1h 0m after the deploy set it up")


def test_a_password_that_does_not_open_the_repository_is_an_error_naming_its_setting(tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password")
    level, reason = backup.check_backup_age(target(
        tmp_path, status="ok\t2026-12-07T03:00:00Z\t4dde7f7c19aa\n", last_ok=ago(600), opened_with=str(wrong)))
    assert level == ERROR and reason.startswith("backup_password_file does not open /srv/restic"), reason
    assert "wrong password" in reason and "not the password" not in reason


def test_a_repository_the_host_cannot_reach_is_an_error_naming_it_without_its_password(tmp_path):
    unreachable = "rest:http://backup:hunter2@127.0.0.1:9/mail"  # loopback: nothing listens on 9 (discard)
    level, reason = backup.check_backup_age(target(
        tmp_path, repository=unreachable, status="ok\t2026-12-07T03:00:00Z\t4dde7f7c19aa\n", last_ok=ago(600),
        opened=unreachable))
    assert level == ERROR and reason.startswith("backup_repository rest:http://127.0.0.1:9/mail cannot be opened "
                                                "from the host: "), reason
    assert "connection refused" in reason and "hunter2" not in reason


def test_a_repository_not_made_yet_is_no_error(tmp_path):
    level, reason = backup.check_backup_age(target(tmp_path, every="30m", set_up_ago=60,
                                                   opened=str(tmp_path / "not-yet")))
    assert level == OK and reason.startswith("no snapshot yet"), reason


# --- the script, run under sh against a stand-in restic --------------------------------------

FAKE_RESTIC = r"""#!/bin/sh
echo "$*" >> "$CALLS"
case "$1" in
  cat) [ -f "$REPO/config" ] && exit 0; [ -n "$WRONG" ] && { echo "Fatal: wrong password or no key found" >&2; exit 12; }
       echo "Fatal: repository does not exist: unable to open config file" >&2; exit 10 ;;
  init) mkdir -p "$REPO" && : > "$REPO/config" ;;
  backup) echo '{"message_type":"summary","files_new":1,"snapshot_id":"d8818f1f2bb7c0de"}' ;;
esac
exit 0
"""


def run_script(tmp_path, repository="/srv/restic", every="24h", *args, env=None, **more):
    """The rendered script, its paths moved under TMP_PATH, run once; (calls to restic, status file).
    Stand-ins: restic (FAKE_RESTIC), and svok, svc and svstat that log what they are asked."""
    platform = debian("13")
    password = tmp_path / "pw"
    password.write_text("x")
    password.chmod(0o600)
    settings = parse(backup_repository=repository, backup_password_file=str(password), backup_every=every, **more)
    root = tmp_path / "root"
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for tool, says in (("svok", ""), ("svc", ""), ("svstat", 'echo "$1: down 1 seconds"')):
        (tools / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "$CALLS"\n{says}\n')
        (tools / tool).chmod(0o755)
    maildir = root / "home/alice/Maildir"
    for folder in ("cur", "new", "tmp", ".Sent/tmp"):
        (maildir / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "restic").write_text(FAKE_RESTIC)
    (tmp_path / "restic").chmod(0o755)
    text = backup.script(platform, settings).replace("~alice/Maildir", str(maildir)).replace("/usr/bin/restic",
                                                                                               str(tmp_path / "restic"))
    for prefix in ("/etc/qmailhost", "/var/lib/qmailhost", "/var/qmail"):
        text = text.replace(prefix, f"{root}{prefix}")
    mine = f"{root}/etc/qmailhost/backup"
    os.makedirs(mine, exist_ok=True)
    (tmp_path / "script").write_text(text)
    with open(f"{mine}/env", "w") as handle:
        handle.write(f"RESTIC_CACHE_DIR={tmp_path}/cache; export RESTIC_CACHE_DIR\n")
    environment = {"PATH": f"{tools}:{os.environ['PATH']}", "CALLS": str(tmp_path / "calls"),
                   "REPO": str(tmp_path / "repo"),
                   **(env or {})}
    result = subprocess.run(["sh", str(tmp_path / "script"), *args], capture_output=True, text=True, env=environment)
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    status_file = root / "var/lib/qmailhost/backup-status"
    return result, calls, status_file.read_text() if status_file.exists() else None, root


def test_the_script_makes_the_repository_backs_up_forgets_checks_and_records(tmp_path):
    result, calls, status, root = run_script(tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls[:3] == ["cat config", "init", "unlock"]
    state, mine = root / "var/lib/qmailhost", root / "etc/qmailhost/backup"
    assert calls[3] == (f"backup --tag qmailhost --host mail.example.org --files-from-verbatim {mine}/paths "
                        f"--exclude-file {mine}/excludes --json -q")
    assert calls[4:] == ["forget --prune --tag qmailhost --host mail.example.org --group-by host,tags "
                         "--keep-daily 7 --keep-weekly 4 --keep-monthly 12",
                         "check --read-data-subset=5%"]
    paths = (mine / "paths").read_text().splitlines()
    assert paths == [str(root / "home/alice/Maildir"), str(mine / "account-hashes")], "only what exists"
    # what is in a Maildir's tmp/ stays behind, the tmp/ itself goes along (a folder needs it)
    assert (mine / "excludes").read_text() == f"{root}/home/alice/Maildir/tmp/*\n{root}/home/alice/Maildir/.*/tmp/*\n"
    outcome, when, snapshot = status.rstrip("\n").split("\t")
    assert (outcome, snapshot) == ("ok", "d8818f1f2bb7c0de") and when.endswith("Z")
    assert abs(int((state / "backup-last-ok").read_text()) - time.time()) < 60
    assert not (state / "backup.lock").exists(), "the lock goes with the run"
    # due again only after backup_every: a second run --if-due asks restic nothing
    result, again, _, _ = run_script(tmp_path, "/srv/restic", "24h", "--if-due")
    assert result.returncode == 0 and again == calls
    # run by hand it backs up now, no init (the repository is there), no second check today
    _, calls, _, _ = run_script(tmp_path)
    assert calls[len(again):] == ["cat config", "unlock", calls[3], calls[4]]


def test_with_backup_queue_the_queue_is_copied_while_qmail_send_is_stopped(tmp_path):
    queue = tmp_path / "root/var/qmail/queue"
    for part in ("mess", "info", "local", "remote", "todo"):
        (queue / part / "0").mkdir(parents=True)
    (queue / "mess/0/4242").write_text("Subject: pending\n\nbody\n")
    (queue / "info/0/4242").write_bytes(b"Fa@example.org\0")
    result, calls, status, root = run_script(tmp_path, backup_queue=True)
    assert result.returncode == 0, result.stderr
    copy = root / "etc/qmailhost/backup/queue"
    assert (copy / "mess/0/4242").read_text() == "Subject: pending\n\nbody\n"
    assert (copy / "info/0/4242").read_bytes() == b"Fa@example.org\0"
    stop = calls.index("svc -d /etc/service/qmail-send")
    assert calls[stop + 1].startswith("svstat") and "svc -u /etc/service/qmail-send" in calls[stop:], calls
    assert calls.index("svc -u /etc/service/qmail-send") < next(i for i, c in enumerate(calls) if c.startswith(
        "backup ")), "qmail-send runs again before restic reads anything"
    assert str(copy) in (root / "etc/qmailhost/backup/paths").read_text().splitlines()


def test_a_rest_repository_is_never_told_to_forget(tmp_path):
    result, calls, status, _ = run_script(tmp_path, "rest:https://backup.example.net/mail")
    assert result.returncode == 0 and status.startswith("ok\t")
    assert not [c for c in calls if c.startswith("forget")]


def test_a_wrong_password_is_recorded_as_a_failure_with_restics_line_and_no_init(tmp_path):
    result, calls, status, _ = run_script(tmp_path, env={"WRONG": "1"})
    assert result.returncode == 1 and calls == ["cat config"]
    outcome, _when, why = status.rstrip("\n").split("\t")
    assert (outcome, why) == ("failed", "Fatal: wrong password or no key found")


def test_a_running_backup_is_left_alone_by_the_schedule_and_waited_for_by_backup_py(tmp_path):
    """The schedule (--if-due) leaves a running backup alone. backup.py (no argument) waits for it,
    then makes its own: it returned at once before, and the drills moved a repository whose
    snapshot was still being written (test_dkim's drill found a bare host with none to restore)."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        lock = tmp_path / "root/var/lib/qmailhost/backup.lock"
        lock.mkdir(parents=True)
        (lock / "pid").write_text(str(sleeper.pid))
        result, calls, _, _ = run_script(tmp_path, "/srv/restic", "1m", "--if-due")
        assert result.returncode == 0 and calls == [] and "a backup runs already" in result.stdout
        threading.Timer(3, lambda: (sleeper.kill(), sleeper.wait())).start()  # the running backup ends in 3 s
        started = time.monotonic()
        result, calls, status, _ = run_script(tmp_path)
        assert time.monotonic() - started >= 2.5, "it waited for the running backup"
        assert "waiting for the backup that runs already" in result.stdout, result.stdout
        assert result.returncode == 0 and calls[0] == "cat config" and status.startswith("ok\t"), result.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    (tmp_path / "calls").unlink()
    lock.mkdir()
    (lock / "pid").write_text("999999")  # a lock whose process is gone
    result, calls, status, _ = run_script(tmp_path)  # its process gone: the lock is taken over
    assert result.returncode == 0 and calls[0] == "cat config" and status.startswith("ok\t")


def test_debians_loop_runs_the_script_when_due_then_sleeps_a_bounded_interval():
    from qmailhost.backends import services

    script = backup.files(debian("13"))["script"]
    assert script == "/etc/qmailhost/backup/backup"
    for every, interval in (("24h", 300), ("2m", 120)):
        run = services.loop_run("backup", "back up when due", f"{script} --if-due",
                                backup.poll_interval(parse(backup_every=every)))
        assert run.endswith(f"\nexec 2>&1\nwhile :; do\n    {script} --if-due\n    sleep {interval}\ndone\n"), run
