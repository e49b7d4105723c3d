"""Backups on the host, on a schedule: restic, to ``backup_repository``, without the laptop.

- ``backup_repository`` turns it on: a restic repository string (``sftp:user@host:/path``,
  ``rest:https://...``, ``s3:...``, ``b2:...`` or an absolute path on another disk).
  ``backup_password_file`` (on the laptop, mode 600) is the repository's password: uploaded
  as a secret (root's, mode 600), never shown, not even as a digest. ``backup_every`` says
  how often (a duration: ``30m``, ``6h``, ``24h``, ``2d``), ``backup_keep`` how many daily,
  weekly and monthly snapshots retention keeps.
- The host's own files, in a root-only directory ({config_dir}/backup, mode 700): the
  password, an ``env`` file (RESTIC_REPOSITORY, RESTIC_PASSWORD_FILE, RESTIC_CACHE_DIR) and
  the ``backup`` script. The script makes the repository when it has none (``restic cat
  config`` fails: ``restic init``), backs up what the components declare (their BackupParts,
  qmailhost/recovery/parts.py, expanded by the host's shell) and the accounts' password
  hashes, without any Maildir's ``tmp/`` (a message is never half in a snapshot), tagged
  ``qmailhost``; then forgets and prunes by ``backup_keep``, except against a rest: server
  (append-only servers refuse deletion, and ``restic forget`` exits 0 having deleted
  nothing: that is never counted as retention); once a day ``restic check`` reads 5% of the
  data. A lock (a directory) keeps two runs apart. The outcome goes to
  /var/lib/qmailhost/backup-status: ``ok<TAB>time<TAB>snapshot`` or
  ``failed<TAB>time<TAB>reason``; restic's output of the last run to backup-last.log.
- Schedule: a supervised loop under daemontools (Debian) that runs the script when due (no
  snapshot within ``backup_every``; after a failure, again after min(backup_every, 1 h)) and
  sleeps a bounded interval, so a restart does not back up each time; on NetBSD, root's
  crontab runs the same every few minutes. Unset ``backup_repository`` retires both and
  removes the password and env files; the repository itself is never touched.
- The status check ``backup_age``: an error when the last run failed (with restic's reason),
  when the newest snapshot is older than 7 days, or when none was made within the first
  interval; a warning past twice ``backup_every``.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import python, server

from qmailhost import ops
from qmailhost.backends import services
from qmailhost.checks import ERROR, OK, SKIPPED, WARNING, connector_arguments, one_line
from qmailhost.component import Component, Needs, Setting
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.recovery.backup import hashes_script
from qmailhost.recovery.parts import backup_parts, part_paths, shell_word
from qmailhost.recovery.snapshots import (
    RESTORE_PENDING,
    TAG,
    absent,
    hashes_path,
    newest_snapshot,
    repository_for,
    shown,
)
from qmailhost.settings import Settings, SettingsError, duration

SERVICE = "qmailhost-backup"
SEND_SERVICE = "qmail-send"  # stopped while the queue is copied (backup_queue)
CRON_NAME = "qmailhost: back up with restic"  # how pyinfra finds the crontab line again
STATE_DIR = "/var/lib/qmailhost"
POLL = 5 * 60  # at most this long between two looks at whether a backup is due (seconds)
RETRY = 3600  # after a failed run, the next try waits min(backup_every, RETRY)
CHECK_EVERY = 86400  # restic check --read-data-subset=5% at most once in this many seconds
ERROR_AGE = 7 * 86400  # a newest snapshot older than this is an error
# The script's record of its runs, about one repository: a new one starts it afresh (a first
# backup at once, no old outcome shown as the new repository's).
RECORD = ("backup-status", "backup-last-ok", "backup-last-try", "backup-last-check")
DEFAULT_KEEP = {"daily": 7, "weekly": 4, "monthly": 12}
_REPOSITORY = re.compile(r"(sftp:[^:/\s][^\s]*:\S*|sftp://\S+|rest:https?://\S+|s3:\S+|b2:\S+|/\S*)")


_SFTP = re.compile(r"sftp:(?://(?:(?P<user2>[^@/\s]+)@)?(?P<host2>[^:/\s]+)(?::(?P<port>\d+))?/.*"
                   r"|(?:(?P<user>[^@:\s]+)@)?(?P<host>[^:/\s]+):.*)")


@dataclass(frozen=True)
class SftpTarget:
    user: str | None
    host: str
    port: int | None

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host


def sftp_target(repository: str | None) -> SftpTarget | None:
    """Who and where an sftp: repository logs in (None for any other kind)."""
    match = _SFTP.fullmatch(repository or "")
    if not match:
        return None
    return SftpTarget(match["user"] or match["user2"], match["host"] or match["host2"],
                      int(match["port"]) if match["port"] else None)


@dataclass(frozen=True)
class Paths:
    restic: str
    packages: tuple[str, ...]
    cache_dir: str  # RESTIC_CACHE_DIR


PATHS = {
    "debian": Paths("/usr/bin/restic", ("restic",), "/var/cache/qmailhost/restic"),
    # pkgsrc sysutils/restic: bin/restic; NetBSD's hier(7) has no /var/cache, /var/db is for such state
    "netbsd": Paths("/usr/pkg/bin/restic", ("restic",), "/var/db/qmailhost/restic-cache"),
}


def own_dir(platform: Platform) -> str:
    """qmailhost's backup files, root's alone: the password, the env file, the script."""
    return f"{platform.config_dir}/backup"


def files(platform: Platform) -> dict[str, str]:
    mine = own_dir(platform)
    return {"password": f"{mine}/password", "env": f"{mine}/env", "script": f"{mine}/backup",
            "ssh_key": f"{mine}/ssh-key", "known_hosts": f"{mine}/known_hosts",
            "status": f"{STATE_DIR}/backup-status", "last_ok": f"{STATE_DIR}/backup-last-ok"}


def packages(platform: Platform, settings: Settings) -> tuple[str, ...]:
    return PATHS[platform.name].packages if settings.backup_repository else ()


def poll_interval(settings: Settings) -> int:
    return min(settings.backup_every, POLL)


def retention_applies(repository: str) -> bool:
    """Can the host delete snapshots there? Not through a rest: server (append-only refuses, and
    `restic forget` still exits 0): retention runs on the repository's own machine then."""
    return not repository.startswith("rest:")


# --- settings ---------------------------------------------------------------------------------


def _repository(value, _values=None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isprintable() or not _REPOSITORY.fullmatch(value):
        raise SettingsError("backup_repository", f"{value!r} is not a restic repository",
                            "set it to sftp:user@host:/path, rest:https://host/path, s3:..., b2:... or an "
                            "absolute path (one word), or null to back up nothing")
    return value


def _password_file(value, values: dict) -> Path | None:
    if value is None:
        if values.get("backup_repository"):
            raise SettingsError("backup_password_file", "backup_repository is set but no password file is",
                                "set backup_password_file to a file on this laptop (mode 600) holding the "
                                "repository's password")
        return None
    if not isinstance(value, str | os.PathLike) or not str(value).isprintable():
        raise SettingsError("backup_password_file", f"{value!r} is not a path", "name a file on this laptop")
    path = Path(os.path.expanduser(str(value)))
    try:
        found = path.stat()
        data = path.read_bytes() if stat.S_ISREG(found.st_mode) else None
    except OSError as error:
        raise SettingsError("backup_password_file", f"{path} cannot be read ({error.strerror})",
                            "create it (mode 600) with the repository's password") from None
    if data is None:
        raise SettingsError("backup_password_file", f"{path} is not a file", "name a file holding the password")
    if found.st_mode & 0o077:
        raise SettingsError("backup_password_file", f"{path} is readable by others (mode "
                            f"{stat.S_IMODE(found.st_mode):o})", f"chmod 600 {path}")
    if not data.strip():
        raise SettingsError("backup_password_file", f"{path} is empty", "write the repository's password into it")
    return path


def _prune_now(value, values: dict) -> bool:
    if value in (None, False):
        return False
    if value is not True:
        raise SettingsError("backup_prune", f"{value!r} is not true or false", "set it to true (backup.py prunes)")
    repository = values.get("backup_repository")
    if not repository:
        raise SettingsError("backup_prune", "backup_repository is not set", "set backup_repository first")
    if str(repository).startswith("rest:") and not values.get("backup_prune_repository"):
        raise SettingsError("backup_prune_repository", f"{shown(str(repository))} is a rest: server, which may be "
                            "append-only (nothing is deleted, and forget still exits 0)",
                            "set backup_prune_repository to a way that may delete (the same rest-server without "
                            "--append-only, or sftp: to the repository's path on the server)")
    return True


def _prune_repository(value, values: dict) -> str | None:
    if value is None:
        return None
    try:
        return _repository(value)
    except SettingsError:
        raise SettingsError("backup_prune_repository", f"{shown(str(value))!r} is not a restic repository",
                            "set it to rest:https://host/path or sftp:user@host:/path (one word)") from None


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_OURS = ("RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE", "RESTIC_CACHE_DIR", "RESTIC_PASSWORD", "RESTIC_PASSWORD_COMMAND")


def _environment(value, values: dict) -> tuple[str, ...]:
    """Names of environment variables on this laptop whose values the host's restic needs (an s3
    or b2 key: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, B2_ACCOUNT_ID, B2_ACCOUNT_KEY, ...);
    read when the deploy runs, like a password file, and kept as secrets on the host."""
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(name, str) for name in value):
        raise SettingsError("backup_environment", f"{value!r} is not a list of variable names",
                            'write it as ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]')
    if value and not values.get("backup_repository"):
        raise SettingsError("backup_environment", "is set but backup_repository is not",
                            "set backup_repository, or drop backup_environment")
    for name in value:
        if not _ENV_NAME.fullmatch(name) or name in _OURS:
            raise SettingsError("backup_environment", f"{name!r} is not a variable restic reads from us"
                                + (" (qmailhost sets it)" if name in _OURS else ""),
                                "name variables such as AWS_ACCESS_KEY_ID (upper case, digits, _)")
        if not os.environ.get(name) or not os.environ[name].isprintable():
            raise SettingsError("backup_environment", f"{name} is not set in this laptop's environment",
                                f"export {name}=... before running pyinfra (its value is never shown)")
    return tuple(dict.fromkeys(value))


def _keep(value, _values=None) -> dict[str, int]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SettingsError("backup_keep", f"must be a mapping, not {type(value).__name__}",
                            'write it as {"daily": 7, "weekly": 4, "monthly": 12}')
    unknown = sorted(str(key) for key in value if key not in DEFAULT_KEEP)
    if unknown:
        raise SettingsError("backup_keep", f"{', '.join(map(repr, unknown))} is not daily, weekly or monthly",
                            "keep only those keys")
    keep = {**DEFAULT_KEEP, **value}
    for key, number in keep.items():
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 100_000:
            raise SettingsError("backup_keep", f"{key} is {number!r}, not a whole number from 0",
                                f"set {key} to how many {key} snapshots to keep")
    if not any(keep.values()):
        raise SettingsError("backup_keep", "keeps nothing (every count is 0)",
                            "keep at least one daily, weekly or monthly snapshot")
    return keep


# --- the deploy ----------------------------------------------------------------------------------


def env_file(platform: Platform, settings: Settings) -> str:
    """What the script reads: restic's repository, password file and cache, and the
    backup_environment variables (an s3 or b2 key) with their laptop values, exported."""
    mine = files(platform)
    return "".join(f"{name}={shlex.quote(value)}; export {name}\n" for name, value in (
        ("RESTIC_REPOSITORY", settings.backup_repository), ("RESTIC_PASSWORD_FILE", mine["password"]),
        ("RESTIC_CACHE_DIR", PATHS[platform.name].cache_dir),
        *((name, os.environ[name]) for name in settings.backup_environment)))


def backup_words(platform: Platform, settings: Settings) -> list[str]:
    """What is backed up, as words for the host's shell: every component's BackupPart (this
    module's own part is nothing)."""
    return [shell_word(path) for path in part_paths(backup_parts(platform), settings, platform)]


def sftp_command(platform: Platform, settings: Settings) -> str | None:
    """How restic reaches an sftp: repository from the host: ssh with the host's own key (made by the
    deploy), the target's host key learnt on first use, never a password prompt."""
    target = sftp_target(settings.backup_repository)
    if target is None:
        return None
    mine = files(platform)
    port = f" -p {target.port}" if target.port else ""
    return (f"ssh -i {mine['ssh_key']} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=accept-new "
            f"-o UserKnownHostsFile={mine['known_hosts']} -o ConnectTimeout=15{port} {target.login} -s sftp")


def script(platform: Platform, settings: Settings) -> str:
    mine, paths, backend = files(platform), PATHS[platform.name], services.backend(platform)
    forget = [f"--keep-{key} {number}" for key, number in settings.backup_keep.items() if number]
    return render("backup/backup.sh.j2", dir=own_dir(platform), mine=mine, state_dir=STATE_DIR, pending=RESTORE_PENDING,
                  restic=paths.restic, every=settings.backup_every, retry=min(settings.backup_every, RETRY),
                  check_every=CHECK_EVERY, tag=TAG, hostname=shlex.quote(settings.hostname),
                  words=" ".join(backup_words(platform, settings)), hashes_file=shlex.quote(hashes_path(platform)),
                  hashes=hashes_script([a.name for a in settings.accounts], platform.shell),
                  sftp=shlex.quote(sftp_command(platform, settings) or ""), queue=settings.backup_queue,
                  queue_dir=f"{platform.qmail_home}/queue", pause=backend.pause_command(platform, SEND_SERVICE),
                  resume=backend.resume_command(platform, SEND_SERVICE),
                  forget=" ".join(forget) if retention_applies(settings.backup_repository) else None)


@deploy("backup")
def configure(platform: Platform, settings: Settings) -> None:
    """With backup_repository, restic's files on the host and its schedule; without, the
    schedule retired and the secret files removed (the repository is never touched)."""
    mine = files(platform)
    if not settings.backup_repository:
        _schedule(platform, settings, on=False)
        for name in ("password", "env", "script"):
            ops.absent_file(name=f"Remove the backup {name} file (backup_repository is unset)", path=mine[name])
        return
    # A host set up for backups for the first time, whose repository already holds its snapshots,
    # is a rebuilt one: its scheduled backups wait for restore.py (RESTORE_PENDING).
    first_here = ops.managed_file(files(platform)["env"]) is None
    pending = newest_snapshot(settings, platform, host.data.dict(), host.name) if first_here else None
    ops.decided(name="Hold scheduled backups until restore.py (the repository holds this host's snapshots)",
                needed=pending is not None, why_not="no restore is pending",
                command=f"mkdir -p {STATE_DIR} && printf '%s\\n' {shlex.quote(pending.label if pending else '')} "
                        f"> {RESTORE_PENDING}")
    if pending is not None:
        logger.warning(f"[{host.name}] {pending.label} holds this host's backup: scheduled backups wait for "
                       "restore.py (pyinfra inventory/<site>.py restore.py)")
    ops.directory(name="Create qmailhost's backup directory (root's alone)", path=own_dir(platform), user="root",
                  group=platform.root_group, mode="700")
    target = sftp_target(settings.backup_repository)
    keyless = target is not None and ops.managed_file(mine["ssh_key"]) is None
    if target is not None:
        ops.decided(name="Make the host's SSH key for the sftp repository", needed=keyless,
                    why_not="the host has its key", command=(
                        f"ssh-keygen -q -t ed25519 -N '' -C {shlex.quote(f'restic@{settings.hostname}')} "
                        f"-f {mine['ssh_key']}"))
    if keyless:  # (the backup_age check shows the line again while the target refuses the key)
        python.call(name="Show the line that lets the host's key in on the sftp target", function=_show_key,
                    public=f"{mine['ssh_key']}.pub", target=target)
    ops.secret_file(name="Install the backup repository's password", dest=mine["password"],
           data=settings.backup_password_file.read_bytes(), group=platform.root_group)
    # The repository string may hold a rest server's user and password: a secret too.
    environment = env_file(platform, settings).encode()
    moved = ops.managed_file(mine["env"]) is not None and ops.differs(mine["env"], environment)
    ops.decided(name="Start the backup record afresh (backup_repository changed)", needed=moved,
                why_not="the repository is the one the backup record is about",
                command="rm -f " + " ".join(f"{STATE_DIR}/{name}" for name in RECORD))
    ops.secret_file(name="Write restic's environment (repository, password file, cache)", dest=mine["env"],
           data=environment, group=platform.root_group)
    ops.whole_file(name="Write the backup script", dest=mine["script"], mode="700",
                   content=script(platform, settings))
    _schedule(platform, settings, on=True)


@deploy("backup now")
def now(platform: Platform, settings: Settings) -> None:
    """One backup now, on the host, with the script the schedule runs (backup.py); the
    snapshot it saved is reported, or the run fails with the script's one-line reason."""
    mine = files(platform)
    server.shell(name=f"Back up now to {shown(settings.backup_repository)} (restic, on the host)",
                 commands=[mine["script"]])
    python.call(name="Report the snapshot", function=_report_snapshot, status=mine["status"])


def _show_key(state, host, public: str, target: SftpTarget) -> None:
    """(python.call) The public half of the host's new key, and where it goes."""
    ok, output = host.run_shell_command(f"cat {public}", print_output=False, **connector_arguments(state, host))
    if ok:
        logger.warning(f"[{host.name}] let the host's backups in: add this line to ~{target.user or 'USER'}"
                       f"/.ssh/authorized_keys on {target.host}:\n    restrict {output.stdout.strip()}")


@deploy("backup prune")
def prune(platform: Platform, settings: Settings) -> None:
    """Retention from the laptop (backup.py with backup_prune): forget by backup_keep and prune,
    through backup_prune_repository where backup_repository is append-only."""
    from pyinfra import host

    location = settings.backup_prune_repository or settings.backup_repository
    repository = repository_for(settings, host.data.dict(), host.name, location)
    python.call(name=f"Forget by backup_keep and prune, through {repository.name} (restic, from this laptop)",
                function=_prune, repository=repository, keep=settings.backup_keep)


def _prune(repository, keep: dict[str, int]) -> None:
    before = len(repository.snapshots())
    args = [f"--keep-{key}={number}" for key, number in keep.items() if number]
    process = repository.restic("forget", "--tag", TAG, "--host", repository.hostname, "--group-by", "host,tags",
                                *args, "--prune")
    _, err = process.communicate()
    after = len(repository.snapshots())
    if after == before and any(word in err.decode(errors="replace") for word in ("403", "Forbidden")):
        raise SettingsError("backup_prune_repository", f"{repository.name} refused to delete (append-only)",
                            "name a way to the repository that may delete: a rest endpoint without --append-only, "
                            "or its path on the server over sftp")
    if process.returncode != 0:
        repository.refuse(err, "restic forget --prune")
    logger.info(f"{before - after} of {before} snapshots forgotten ({after} kept by backup_keep), data pruned")


def _report_snapshot(state, host, status: str) -> None:
    """(python.call passes STATE and HOST) The status file's snapshot, logged."""
    ok, output = host.run_shell_command(f"cat {status}", print_output=False, **connector_arguments(state, host))
    fields = output.stdout.strip().split("\t") if ok else []
    if len(fields) > 2 and fields[0] == "ok":
        logger.info(f"[{host.name}] snapshot {fields[2][:8]} saved at {fields[1]}")


def _schedule(platform: Platform, settings: Settings, on: bool) -> None:
    every = poll_interval(settings)
    services.repeat(platform, services.Repeat(
        "backup", SERVICE, "backs up with restic when due", "back up when due",
        f"{files(platform)['script']} --if-due", every, CRON_NAME, cron_minute=f"*/{every // 60}"),
        on, operation=f"Back up with restic when due (cron, every {every // 60} min)" if on
        else "Stop backing up with restic (cron)", off_because="backup_repository is unset")


# --- status check --------------------------------------------------------------------------------


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def _field(output: str, name: str) -> str:
    found = re.search(rf"^{name}\t(.*)$", output, re.MULTILINE)
    return found.group(1).strip() if found else ""


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


PROBE_SECONDS = 20  # restic retries an unreachable repository for minutes: the check waits this long


def _repository_answers(target, mine: dict) -> tuple[str, str] | None:
    """Does the repository open from the host with its password (restic cat config)? An error
    naming the setting when not; None when it does, or does not exist yet (the first backup makes it)."""
    restic = PATHS[target.platform.name].restic
    sftp = sftp_command(target.platform, target.settings)
    output = target.run(f"[ -r {mine['env']} ] || {{ printf 'probe\\tnoenv\\n'; exit 0; }}; . {mine['env']}; "
                        f"sftp={shlex.quote(sftp) if sftp else ''}; "
                        f"out=$(timeout {PROBE_SECONDS} {restic} ${{sftp:+-o \"sftp.command=$sftp\"}} cat config "
                        "2>&1 >/dev/null); rc=$?; "
                        "printf 'probe\\t%s\\t%s\\n' \"$rc\" \"$(printf '%s\\n' \"$out\" | grep -m1 'Fatal:' || "
                        "printf '%s\\n' \"$out\" | grep . | tail -1)\"; "
                        "printf 'retried\\t%s\\n' \"$(printf '%s\\n' \"$out\" | grep 'retrying' | tail -1)\"")
    fields = _field(output, "probe").split("\t", 1)
    code, why = fields[0], one_line(fields[1] if len(fields) > 1 else "")
    retried = one_line(_field(output, "retried"))  # restic's last retry: what it met (connection refused, ...)
    where = shown(target.settings.backup_repository)
    if code == "noenv":
        return ERROR, f"{mine['env']} cannot be read: deploy again"
    if code in ("0", "10") or absent(why):
        return None
    if "wrong password" in why:
        return ERROR, f"backup_password_file does not open {where} ({why}): put the repository's password in it"
    if code == "124":  # restic retries for minutes: what it met so far says why
        met = retried.split(": ", 1)[-1] if retried else why
        why = f"no answer within {PROBE_SECONDS} s" + (f" ({met[-200:]})" if met else "")
    let_in = ""
    if sftp and ("denied" in why.lower() or "sftp session" in why.lower()):
        public = one_line(target.run(f"cat {mine['ssh_key']}.pub 2>/dev/null; true").strip())
        login = sftp_target(target.settings.backup_repository)
        let_in = (f"; let the host's key in: add 'restrict {public}' to ~{login.user or 'USER'}/.ssh/authorized_keys "
                  f"on {login.host}") if public else ""
    return ERROR, f"backup_repository {where} cannot be opened from the host: {why or f'restic exited {code}'}{let_in}"


def check_backup_age(target):
    """With backup_repository, the host's last backup ran well and its newest snapshot is recent."""
    settings = target.settings
    if not settings.backup_repository:
        return SKIPPED, "backup_repository is not set"
    mine = files(target.platform)
    reached = _repository_answers(target, mine)
    if reached is not None:
        return reached
    # (each read as one whole line: a file without its final newline must not swallow the next)
    output = target.run(f"printf 'status\\t%s\\n' \"$(cat {mine['status']} 2>/dev/null)\"; "
                        f"printf 'last_ok\\t%s\\n' \"$(cat {mine['last_ok']} 2>/dev/null)\"; "
                        f"printf 'since\\t'; find {mine['env']} {target.platform.shell.find_mtimes} 2>/dev/null "
                        "| head -1; echo; printf 'now\\t%s\\n' \"$(date -u +%s)\"")
    status = _field(output, "status").split("\t")
    now, last_ok, since = (_number(_field(output, name)) for name in ("now", "last_ok", "since"))
    every = settings.backup_every
    if now is None:
        return ERROR, "the host's clock could not be read"
    newest = f"; the newest snapshot is {_age(now - last_ok)} old" if last_ok else "; no snapshot yet"
    if status[0] == "failed":
        why = one_line(status[2] if len(status) > 2 else "no reason recorded")
        return ERROR, f"the backup at {status[1] if len(status) > 1 else '?'} failed: {why}{newest}"
    if not last_ok or status[0] != "ok":
        waited = now - since if since else 0
        if waited > every + poll_interval(settings):
            return ERROR, (f"no backup yet, {_age(waited)} after the deploy set it up (every {_age(every)}): "
                           f"see {STATE_DIR}/backup-last.log on the host")
        return OK, f"no snapshot yet: the first backup is due within {_age(every + poll_interval(settings) - waited)}"
    age = now - last_ok
    snapshot = status[2][:8] if len(status) > 2 else "?"
    if age > ERROR_AGE:
        return ERROR, f"the newest snapshot ({snapshot}) is {_age(age)} old, more than 7 days"
    if age > 2 * every:
        return WARNING, f"the newest snapshot ({snapshot}) is {_age(age)} old, more than twice backup_every"
    return OK, f"snapshot {snapshot}, {_age(age)} old"


COMPONENT = Component(
    name="backup",
    needs=lambda platform, settings: Needs(packages=packages(platform, settings)),
    settings=(
        Setting("backup_repository", None, _repository,
                "restic backs up on the host, on a schedule, to this repository: `sftp:user@host:/path`, "
                "`rest:https://...`, `s3:...`, `b2:...` or an absolute path; unset: no scheduled backups"),
        Setting("backup_password_file", None, _password_file,
                "a file on the laptop (mode 600): the repository's password; required with backup_repository"),
        Setting("backup_every", "24h", duration("backup_every", 60, ERROR_AGE),
                "how often the host backs up: a duration from `1m` to `7d`"),
        Setting("backup_keep", dict(DEFAULT_KEEP), _keep,
                "retention: how many `daily`, `weekly`, `monthly` snapshots to keep (not through rest:)"),
        Setting("backup_prune_repository", None, _prune_repository,
                "a way to the repository that may delete, for retention from the laptop when `backup_repository` "
                "is an append-only `rest:` server: its rest endpoint without `--append-only`, or `sftp:` to its path"),
        Setting("backup_prune", False, _prune_now,
                "`backup.py` applies retention instead of backing up: forget by `backup_keep` and prune, run from "
                "the laptop through `backup_prune_repository` (else `backup_repository`)"),
        Setting("backup_environment", None, _environment,
                "names of environment variables on the laptop that the host's restic needs, with their values "
                "(an s3 or b2 key: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `B2_ACCOUNT_ID`, ...); secrets"),
    ),
    checks=(check_backup_age,),
)
