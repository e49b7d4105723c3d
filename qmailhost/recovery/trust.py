"""What a backup may say: no more than a deploy would have made (issue 24, M4).

A backup is files on the laptop; whoever can write them can edit the manifest and make its
sum anew (the sum catches damage, not intent). restore.py runs as root, so what it reads
from a backup is held to what the deploy makes: a mode is masked, anything else is refused
in one line naming the backup and the entry, before anything on the host changes.

- entries: files and directories only (no links, devices), each stored where backup.py
  stores it; the shadow once; pending messages under their 32-hex-digit ids;
- paths: absolute and plain (no "." or ".."), and (require_within_parts, once the host has
  said where a ~user leads) under a path a component's part declares;
- modes: octal digits; masked to MODE_CAP (the choice is explained there);
- owners and groups: names of the account-name pattern, and only those the deploy makes:
  the inventory's accounts, SERVICE_OWNERS, ROOT_GROUPS and SERVICE_GROUPS; what lies under
  a ~user part (a Maildir) is that user's alone, owner and group;
- accounts: the inventory's. One the backup's header names besides (root, a user made by
  hand) is ignored with a warning, with its hash and the files it owns; a hash is crypt(3)'s
  alphabet only, never empty, and never shown.

open_backup (restore.py) applies trusted_backup to the manifest it read and verified;
send_files checks vetted() again for every record it streams, as the last gate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from pyinfra import logger

from qmailhost.recovery.common import RecoveryError
from qmailhost.recovery.manifest import MANIFEST, Record, _plain
from qmailhost.recovery.parts import _TILDE
from qmailhost.settings import RESERVED_USERS, Settings, SettingsError

# The most a restored mode may allow, by kind. What the deploy and the mail tools make is
# within it (Maildirs 700 and 600, qmail-local's 644 deliveries, keys 400 to 640, certbot's
# 755 and 644, the TMDA archive's 700 and 750), and nothing a backup carries is a program or
# shared for writing: never a setuid, setgid or sticky bit (a root-owned setuid file from a
# backup is a root shell), never write for group or others, never execute on a file (a
# certbot hook dropped into renewal-hooks/ is run only if executable). More is masked off,
# with one warning: a mode is a permission a backup may narrow, never widen.
MODE_CAP = {"file": 0o644, "dir": 0o755}
# Who may own a restored entry besides the inventory's accounts: root (the TLS pair,
# certbot's files, the TMDA archive, the DKIM directories) and qmail-remote's user qmailr
# (the DKIM keys, readable by it alone: tasks/dkim.py). No other user owns a backed-up file.
SERVICE_OWNERS = ("root", "qmailr")
# Groups: each account's own (its Maildir), the root group by either platform's name
# (Debian's root, NetBSD's wheel: gid 0 on both), and qmailtls, which may read the TLS key.
ROOT_GROUPS = ("root", "wheel")
SERVICE_GROUPS = ("qmailtls",)

_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,30}")  # the account-name pattern (qmailhost/settings.py)
_MODE = re.compile(r"[0-7]{1,4}")
_QUEUED = re.compile(r"queue/[0-9a-f]{32}\.(msg|env)")
_HASH = re.compile(r"[A-Za-z0-9./$=,+_!*-]+")  # crypt(3)'s alphabet and its separators; no ":"
_TEXT_FIELDS = ("kind", "path", "stored", "sha256", "mode", "owner", "group", "envelope")
_FIX = "restore from a backup you trust (set restore_from), or take a new one"


def trusted_backup(directory: Path, header: dict, records: list[Record], shadow: bytes,
                   settings: Settings) -> tuple[tuple[str, ...], dict[str, str], list[Record]]:
    """(accounts, account -> hash, records) of a verified backup, each held to what a deploy
    makes: records vetted and their modes masked; RecoveryError (one line) on the first that
    cannot be."""
    manifest = directory / MANIFEST
    accounts, ignored = _accounts(manifest, header, settings)
    owners = {*SERVICE_OWNERS, *(a.name for a in settings.accounts)}
    groups = {*ROOT_GROUPS, *SERVICE_GROUPS, *(a.name for a in settings.accounts)}
    kept, masked = [], []
    for record in records:
        _check_entry(manifest, record)
        if record.kind not in MODE_CAP:
            kept.append(record)
            continue
        if record.owner in ignored:
            continue  # an account the inventory lacks: its files are not restored (warned above)
        _check_name(manifest, record, "owner", record.owner, owners)
        _check_name(manifest, record, "group", record.group, groups)
        mode = format(int(record.mode, 8) & MODE_CAP[record.kind], "o")
        if mode != record.mode:
            masked.append((record, mode))
        kept.append(replace(record, mode=mode))
    if masked:
        first, mode = masked[0]
        logger.warning(f"{manifest}: {len(masked)} modes masked to what the deploy gives (no setuid, setgid or "
                       f"sticky bit, no write for others, no execute on a file), e.g. {first.path!r}: "
                       f"{first.mode} -> {mode}")
    return accounts, _hashes(directory / "shadow", shadow, accounts, ignored), kept


def vetted(record: Record) -> bool:
    """RECORD's mode and names are what trusted_backup lets through (the last gate)."""
    return (record.kind in MODE_CAP and isinstance(record.mode, str) and bool(_MODE.fullmatch(record.mode))
            and not int(record.mode, 8) & ~MODE_CAP[record.kind]
            and all(isinstance(n, str) and _NAME.fullmatch(n) for n in (record.owner, record.group)))


def refuse_outside_parts(records: Iterable[Record], directory: Path, words: list[str], homes: dict[str, str],
                         accounts: Iterable[str]) -> None:
    """Every file and directory of the backup lies under one of WORDS (the parts' paths,
    "~user/rest" led to the user's home as the host says: HOMES), and what lies under a
    ~user part is that user's, owner and group; else a one-line SettingsError naming the
    entry, before anything changes. An entry of an account the host lacks lies nowhere
    here and is not restored (require_deployed warns)."""
    roots: dict[str, tuple[str, str]] = {}  # where a part leads on this host -> (its word, whose ~ it is)
    for word in words:
        match = _TILDE.fullmatch(word)
        if match is None:
            roots[word.rstrip("/") or "/"] = (word, "")
        elif match[1] in homes:
            roots[homes[match[1]].rstrip("/") + (match[2] or "").rstrip("/")] = (word, match[1])
    absent = set(accounts) - set(homes)
    manifest = directory / MANIFEST
    for record in records:
        if record.kind not in MODE_CAP:
            continue
        within = [root for root in roots if record.path == root or record.path.startswith(root.rstrip("/") + "/")]
        if not within:
            if record.owner in absent:
                continue
            raise SettingsError("restore_from", f"{manifest}: {record.path!r} lies outside what the components back "
                                f"up with these settings ({', '.join(sorted(words)) or 'nothing'})", _FIX)
        word, user = roots[max(within, key=len)]
        if user and (record.owner, record.group) != (user, user):
            raise SettingsError("restore_from", f"{manifest}: {record.path!r} is {record.owner}:{record.group}, "
                                f"but what lies under {word} is {user}:{user} alone", _FIX)


# --- the pieces ---------------------------------------------------------------------------


def _refuse(manifest: Path, record: Record, problem: str) -> RecoveryError:
    name = record.path or record.stored or record.kind
    return RecoveryError(f"{manifest}: entry {name!r}: {problem}")


def _check_entry(manifest: Path, record: Record) -> None:
    """Its fields' types, its kind, its path and where it is stored, as backup.py writes them."""
    for name in _TEXT_FIELDS:
        if not isinstance(getattr(record, name), str):
            raise _refuse(manifest, record, f"its {name} is not text")
    for name in ("size", "mtime_ns"):
        value = getattr(record, name)
        if not isinstance(value, int) or isinstance(value, bool) or (name == "size" and value < 0):
            raise _refuse(manifest, record, f"its {name} is not a whole number")
    if record.kind in MODE_CAP:
        if "\0" in record.path or not _plain(record.path, absolute=True):
            raise _refuse(manifest, record, "its path is not absolute and plain (no '.' or '..')")
        if record.stored != ("files" + record.path if record.kind == "file" else ""):
            raise _refuse(manifest, record, f"stored as {record.stored!r}, not where backup.py stores it")
        if not _MODE.fullmatch(record.mode):
            raise _refuse(manifest, record, f"its mode {record.mode!r} is not octal digits")
    elif record.kind == "shadow":
        if (record.path, record.stored) != ("", "shadow"):
            raise _refuse(manifest, record, "the shadow is stored as 'shadow', with no path")
    elif record.kind in ("message", "envelope"):
        suffix = "msg" if record.kind == "message" else "env"
        if record.path or not _QUEUED.fullmatch(record.stored) or not record.stored.endswith(suffix) or (
                record.kind == "message" and record.envelope != record.stored[:-3] + "env"):
            raise _refuse(manifest, record, f"not where backup.py stores a pending {record.kind} "
                          f"(queue/<32 hex digits>.{suffix})")
    else:
        raise _refuse(manifest, record, f"its kind {record.kind!r} is none a backup holds (files, directories)")


def _check_name(manifest: Path, record: Record, what: str, name: str, allowed: set[str]) -> None:
    if not _NAME.fullmatch(name):
        raise _refuse(manifest, record, f"its {what} {name!r} is not a user name")
    if name not in allowed:
        raise _refuse(manifest, record, f"its {what} {name!r} is none the deploy makes "
                      f"({', '.join(sorted(allowed))})")


def _accounts(manifest: Path, header: dict, settings: Settings) -> tuple[tuple[str, ...], set[str]]:
    """(the header's accounts the inventory has, the valid names it adds: ignored with their files)."""
    named = header.get("accounts")
    if not isinstance(named, list) or not all(isinstance(a, str) for a in named):
        raise RecoveryError(f"{manifest}: its accounts are not a list of names")
    inventory = {a.name for a in settings.accounts}
    accounts = tuple(dict.fromkeys(a for a in named if a in inventory))
    ignored = set()
    for account in dict.fromkeys(a for a in named if a not in inventory):
        if account in RESERVED_USERS or not _NAME.fullmatch(account):
            why = "a system user"
        else:
            why = "not an account of the inventory"
            ignored.add(account)
        logger.warning(f"{manifest} names the account {account!r}, {why}: its mail and password are not restored")
    return accounts, ignored


def _hashes(path: Path, shadow: bytes, accounts: tuple[str, ...], ignored: set[str]) -> dict[str, str]:
    """account -> its backed-up hash, for ACCOUNTS only; a hash is never shown, not even when refused."""
    hashes = {}
    for line in shadow.decode(errors="replace").splitlines():
        account, _, hashed = line.partition(":")
        if account not in accounts:
            if account not in ignored:
                logger.warning(f"{path} holds a password hash of {account!r}, none of the accounts restored "
                               f"({', '.join(accounts) or 'none'}): not restored")
            continue
        if not _HASH.fullmatch(hashed):
            raise RecoveryError(f"{path}: the hash of {account} is no crypt(3) hash (empty, or holding characters "
                                "besides letters, digits and ./$=,+_!*-)")
        hashes[account] = hashed
    return hashes
