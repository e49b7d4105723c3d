"""Snapshots: the host's restic repository, read from the laptop with restic's own client.

The host backs itself up to ``backup_repository`` on its own schedule (tasks/backup.py).
restore.py and a bare host's deploy read the same repository from the laptop, with the
owner's password file (``backup_password_file``) and the restic the laptop has:

- this host's snapshots (tag ``qmailhost``, restic's host = the mail hostname), oldest first;
- a snapshot's listing (``restic ls --json``: kinds, modes, mtimes to the nanosecond) and
  its content (``restic dump --archive tar``: the bytes, the owners' and groups' names);
- materialize: a snapshot written out as a backup directory of the laptop format
  (manifest.json with every file's sha256, files/, shadow), private, in a temporary
  directory removed when the run ends, so open_backup verifies and vets it like any other
  backup: nothing from a repository is trusted more than a backup directory. The queue's
  copy (backup_queue) becomes its pending messages with their envelopes, as the laptop
  format keeps them.

A repository that is a path names a disk of the host: the laptop reads it over sftp through
the inventory's own SSH connection (``restic -o sftp.command=...``). A repository string may
hold a rest server's password, so it is shown with its user part cut (``shown``). A
repository that does not exist yet holds no snapshots; one that cannot be read, or a
password that does not open it, is a one-line error naming the setting.
"""

from __future__ import annotations

import atexit
import calendar
import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pyinfra import logger

from qmailhost.facts import STATE_DIR
from qmailhost.platform import Platform
from qmailhost.recovery.backup import envelope_of, keep_queued
from qmailhost.recovery.common import RecoveryError
from qmailhost.recovery.manifest import (
    FORMAT,
    Record,
    _store,
    _write_private,
    newest_backup,
    stored_path,
    write_manifest,
)
from qmailhost.recovery.remote import remote_for
from qmailhost.settings import Settings, SettingsError

TAG = "qmailhost"  # every snapshot the host makes carries it
# On a rebuilt host whose repository holds its snapshots, scheduled backups wait for restore.py
# (the first deploy writes this file, restore.py removes it): a snapshot of the bare host would
# become the newest, and retention would soon forget the ones that hold the mail.
RESTORE_PENDING = f"{STATE_DIR}/restore-pending"
# What the held schedule wrote while it waited (its last try, after which it waits before trying
# again; its "waiting for restore.py" outcome): forgotten with RESTORE_PENDING.
WAITED = (f"{STATE_DIR}/backup-last-try", f"{STATE_DIR}/backup-status")
SNAPSHOT_ID = re.compile(r"[0-9a-f]{8,64}")
_GO_SETUID, _GO_SETGID, _GO_STICKY = 1 << 23, 1 << 22, 1 << 20  # Go's os.FileMode bits (restic ls --json)
_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
# restic's words for "no repository there" (0.18 exits 10; 0.14 exits 1 and says "unable to open
# config file" for an unreachable server too, so the reason after it decides)
_ABSENT = ("repository does not exist", "no such file or directory", "file does not exist", "404")
_WRONG_PASSWORD = "wrong password or no key found"


def hashes_path(platform: Platform) -> str:
    """Where the host's backup script keeps the accounts' "name:hash" lines for restic to carry."""
    return f"{platform.config_dir}/backup/account-hashes"


def queue_copy(platform: Platform) -> str:
    """Where the host's backup script copies the queue (backup_queue) for restic to carry."""
    return f"{platform.config_dir}/backup/queue"


def shown(location: str) -> str:
    """LOCATION as it may be printed: a user part (user:password@) cut out."""
    return re.sub(r"(://)[^/@\s]*@", r"\1", location)


@dataclass(frozen=True)
class Snapshot:
    id: str
    time: str
    hostname: str
    paths: tuple[str, ...]

    @property
    def short_id(self) -> str:
        return self.id[:8]


@dataclass(frozen=True)
class Repository:
    """backup_repository as the laptop reaches it: LOCATION and OPTIONS for restic, the password file."""

    location: str
    options: tuple[str, ...]
    password_file: Path
    hostname: str

    @property
    def name(self) -> str:
        return shown(self.location if not self.options else self.location.split(":", 2)[2])

    def restic(self, *args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
        environ = {**os.environ, "RESTIC_REPOSITORY": self.location,
                   "RESTIC_PASSWORD_FILE": str(self.password_file)}
        environ.pop("RESTIC_PASSWORD", None)
        environ.pop("RESTIC_PASSWORD_COMMAND", None)
        try:
            return subprocess.Popen(["restic", *self.options, *args], env=environ, stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise SettingsError("backup_repository", "restic is not installed on this laptop",
                                "install it (apt-get install restic; pkgin install restic)") from None

    def output(self, *args: str) -> bytes | None:
        """restic ARGS's output; None when the repository does not exist (yet)."""
        process = self.restic(*args)
        out, err = process.communicate()
        if process.returncode != 0:
            self.refuse(err, f"restic {args[0]}", none_ok=True)
            return None
        return out

    def refuse(self, err: bytes, what: str, none_ok: bool = False) -> None:
        """restic's error output ERR as one line naming the setting at fault (none: an absent repository)."""
        text = err.decode(errors="replace")
        if _WRONG_PASSWORD in text:
            raise SettingsError("backup_password_file", f"{self.password_file} does not open {self.name} "
                                f"({_WRONG_PASSWORD})", "put the repository's password in it")
        if none_ok and absent(text):
            return
        raise SettingsError("backup_repository", f"{self.name} cannot be read from this laptop: {what} failed: "
                            f"{_telling(text)}", "make it reachable from here (or restore from a backup "
                            "directory: restore_from)")

    def snapshots(self) -> list[Snapshot]:
        """This host's snapshots, oldest first (none when the repository does not exist yet)."""
        out = self.output("snapshots", "--json", "--tag", TAG, "--host", self.hostname)
        found = [Snapshot(s["id"], s["time"], s["hostname"], tuple(s.get("paths") or ()))
                 for s in json.loads(out or b"[]") or []]
        return sorted(found, key=lambda s: (_ns(s.time), s.id))

    def nodes(self, snapshot: Snapshot) -> dict[str, dict]:
        """path -> restic's node (ls --json) for every entry at or under the snapshot's paths."""
        out = self.output("ls", "--json", snapshot.id) or b""
        nodes = {}
        for line in out.splitlines():
            node = json.loads(line)
            if node.get("struct_type") == "node" and _within(node.get("path", ""), snapshot.paths):
                nodes[node["path"]] = node
        return nodes

    def read(self, snapshot: Snapshot, path: str) -> bytes:
        process = self.restic("dump", snapshot.id, path)
        out, err = process.communicate()
        if process.returncode != 0:
            self.refuse(err, f"restic dump {path}")
        return out

    @contextlib.contextmanager
    def archive(self, snapshot: Snapshot) -> Iterator[tarfile.TarFile]:
        """The snapshot as a tar stream (restic dump --archive tar), read as it comes."""
        process = self.restic("dump", "--archive", "tar", snapshot.id, "/")
        try:
            with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
                yield archive
                for _ in archive:
                    pass
            while process.stdout.read(1 << 16):  # the padding after the end of the archive
                pass
        except BaseException:
            process.kill()  # our side failed (or restic's stream did: its status says so below)
            process.wait()
            if process.returncode in (0, -9):
                raise
        finally:
            process.stdout.close()
        err = process.stderr.read()
        if process.wait() != 0:
            self.refuse(err, "restic dump")


def absent(text: str) -> bool:
    """Does restic's error output TEXT say the repository does not exist (yet), rather than
    that it cannot be reached or opened?"""
    text = text.lower()
    return any(words in text for words in _ABSENT)


def _telling(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith("Fatal:")]
    return (fatal or lines or ["no error output"])[-1][:300]


def _within(path: str, tops: tuple[str, ...]) -> bool:
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in tops)


def _ns(text: str) -> int:
    """An RFC 3339 time as restic prints it, in nanoseconds since the epoch."""
    match = _TIME.fullmatch(text)
    if not match:
        raise RecoveryError(f"restic printed the time {text!r}, which is not RFC 3339")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    seconds = calendar.timegm((int(year), int(month), int(day), int(hour), int(minute), int(second)))
    if zone != "Z":
        sign = -1 if zone[0] == "+" else 1
        seconds += sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 10**9 + int((fraction or "").ljust(9, "0"))


def _mode(node: dict) -> str:
    mode = int(node.get("mode", 0))
    unix = mode & 0o777
    for go, bit in ((_GO_SETUID, 0o4000), (_GO_SETGID, 0o2000), (_GO_STICKY, 0o1000)):
        if mode & go:
            unix |= bit
    return format(unix, "o")


# --- the repository as the laptop reaches it ----------------------------------------------------


def repository_for(settings: Settings, data: dict, name: str, location: str | None = None) -> Repository:
    """backup_repository (or LOCATION, another way to it) from this laptop: a path is a disk of the
    host, read over sftp through the inventory's SSH connection (DATA, the host's pyinfra data;
    NAME, the inventory name)."""
    location = location or settings.backup_repository
    options: tuple[str, ...] = ()
    if location.startswith("/"):
        argv = list(remote_for(data, name).argv)
        target = argv[-1]
        command = [*argv[:-2], "-s", "--", target, "sftp"]
        options = ("-o", "sftp.command=" + " ".join(shlex.quote(word) for word in command))
        location = f"sftp:{target}:{location}"
    return Repository(location, options, settings.backup_password_file, settings.hostname)


def choose(repository: Repository, wanted: str | None) -> Snapshot | None:
    """The newest snapshot, or the one whose ID starts with WANTED; None when there is none at all."""
    snapshots = repository.snapshots()
    if wanted is None:
        return snapshots[-1] if snapshots else None
    matching = [s for s in snapshots if s.id.startswith(wanted)]
    if len(matching) != 1:
        known = ", ".join(s.short_id for s in snapshots[-5:]) or "none"
        raise SettingsError("restore_from", f"{'no' if not matching else 'more than one'} snapshot of "
                            f"{repository.hostname} in {repository.name} has the ID {wanted} (the newest: {known})",
                            "set restore_from to a snapshot ID that restic snapshots lists, or unset it")
    return matching[0]


# --- what a snapshot says, and a snapshot written out -------------------------------------------


def records(repository: Repository, snapshot: Snapshot, platform: Platform) -> list[Record]:
    """The snapshot's files and directories (no content, no sums): what a bare deploy asks."""
    ours = (hashes_path(platform), queue_copy(platform))
    return [Record(kind="dir" if node["type"] == "dir" else "file", path=path, size=int(node.get("size", 0)),
                   mtime_ns=_ns(node["mtime"]), mode=_mode(node))
            for path, node in repository.nodes(snapshot).items()
            if node["type"] in ("dir", "file") and not any(path == p or path.startswith(p + "/") for p in ours)]


def materialize(repository: Repository, snapshot: Snapshot, platform: Platform, directory: Path) -> Path:
    """SNAPSHOT written into DIRECTORY as a backup of the laptop format (restore.open_backup reads it)."""
    nodes, hashes, queue = repository.nodes(snapshot), hashes_path(platform), queue_copy(platform) + "/"
    kept, shadow, queued, pending = [], b"", {}, {}
    with repository.archive(snapshot) as archive:
        for member in archive:
            path = "/" + member.name.strip("/")
            node = nodes.get(path)
            if node is None:
                continue  # a parent of the snapshot's paths: not the host's data
            if path.startswith(queue) or path + "/" == queue:  # the queue's copy: pending messages
                if member.isfile() and path.count("/") > queue.count("/"):
                    part, number = path[len(queue):].split("/", 1)[0], path.rsplit("/", 1)[1]
                    if part == "mess":
                        pending[number] = directory / "queue" / f"incoming-{number}"
                        _store(archive.extractfile(member), pending[number])
                    elif part in ("info", "local", "remote", "todo"):
                        queued.setdefault(number, {})[part] = _small(archive, member)
                continue
            common = {"path": path, "mtime_ns": _ns(node["mtime"]), "mode": format(member.mode & 0o7777, "o"),
                      "owner": member.uname or str(member.uid), "group": member.gname or str(member.gid)}
            if member.isdir():
                kept.append(Record(kind="dir", **common))
            elif member.isfile() and path == hashes:
                shadow = _small(archive, member)
            elif member.isfile():
                stored = stored_path(path)
                sha256, size = _store(archive.extractfile(member), directory / stored)
                kept.append(Record(kind="file", stored=stored, size=size, sha256=sha256, **common))
    for number, incoming in pending.items():
        envelope = envelope_of(queued.get(number, {}))
        kept += keep_queued(directory, number, incoming, envelope) if envelope else []
        incoming.unlink(missing_ok=True)
    accounts = [line.split(b":", 1)[0].decode(errors="replace") for line in shadow.splitlines() if b":" in line]
    header = {"format": FORMAT, "hostname": snapshot.hostname, "accounts": accounts, "created": snapshot.time,
              "snapshot": snapshot.id, "repository": repository.name}
    write_manifest(directory, header, sorted(kept, key=lambda r: r.path)
                   + [_write_private(directory, "shadow", "shadow", shadow)])
    return directory


SMALL = 1 << 20  # an envelope part or the hashes file: bytes at most (a snapshot is the host's word)


def _small(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A small file of the snapshot, read whole only if it is small (held in memory)."""
    if member.size > SMALL:
        raise RecoveryError(f"the snapshot's {member.name} is {member.size} bytes, more than such a file ever "
                            f"holds ({SMALL}): restore from another snapshot (restore_from)")
    return archive.extractfile(member).read()


def private_directory(prefix: str) -> Path:
    """A new directory of this laptop's user alone (700), removed when this run ends."""
    made = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, made, ignore_errors=True)
    return made


# --- what a bare deploy asks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Holding:
    """The newest backup that a deploy asks (a snapshot, or a directory on this laptop): its name
    for messages, its records, and how to read one of its files."""

    label: str
    records: list[Record]
    read: Callable[[Record], bytes]


_asked: dict[tuple[int, str], tuple[Settings, Holding | None]] = {}  # (settings, repository) -> the newest


def newest_snapshot(settings: Settings, platform: Platform, data: dict, name: str) -> Holding | None:
    """The newest snapshot of this host in backup_repository, as a Holding; None when there is
    none yet, or when this laptop cannot read the repository (a warning says so: the deploy
    cannot tell what a restore would put back). Asked once per run (per SETTINGS)."""
    key = (id(settings), settings.backup_repository)
    if key not in _asked:
        repository = repository_for(settings, data, name)
        try:
            snapshot = choose(repository, None)
        except SettingsError as error:
            if error.setting != "backup_repository":
                raise
            logger.warning(f"No snapshot of {settings.hostname} asked: {error}")
            snapshot = None
        _asked[key] = (settings, None if snapshot is None else Holding(
            f"snapshot {snapshot.short_id} in {repository.name}", records(repository, snapshot, platform),
            lambda record: repository.read(snapshot, record.path)))
    return _asked[key][1]


def newest_holding(settings: Settings, platform: Platform, inventory: tuple[dict, str] | None = None
                   ) -> Holding | None:
    """What a deploy of a bare host asks before making anew what restore.py would put back: the
    newest snapshot in backup_repository, else (none there yet, or no repository) the newest
    backup directory on this laptop; None when there is neither. INVENTORY: the host's data and
    name (how a repository on its disk is reached); default: the host pyinfra is deploying."""
    if settings.backup_repository:
        if inventory is None:
            from pyinfra import host

            inventory = (host.data.dict(), host.name)
        holding = newest_snapshot(settings, platform, *inventory)
        if holding is not None:
            return holding
    newest = newest_backup(settings)
    if newest is None:
        return None
    directory, found = newest
    return Holding(str(directory), found, lambda record: (directory / record.stored).read_bytes())
