"""What a backup holds beyond the components' files, shared by the host's backup script and
by a snapshot written out (snapshots.materialize): the script that prints the accounts'
password hashes, and each pending message's qmail-queue envelope, kept once-only.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Iterable
from pathlib import Path

from qmailhost.platform import Shell
from qmailhost.recovery.manifest import Record, _write_private, sha256_file


def hashes_script(accounts: Iterable[str], shell: Shell) -> str:
    """Prints "name:hash" of each of ACCOUNTS that has a hash (the platform's password field)."""
    users = " ".join(shlex.quote(a) for a in accounts) or "''"
    return (f"for u in {users}; do h=$({shell.password_field}); "
            "[ -n \"$h\" ] && printf '%s:%s\\n' \"$u\" \"$h\"; done; true")


def envelope_of(parts: dict[str, bytes]) -> bytes | None:
    """qmail-queue's envelope (F sender, T recipients still pending) from a message's
    queue files: todo/ before qmail-send has read it, else info/ with local/ and remote/."""
    if "todo" in parts:
        fields = parts["todo"].split(b"\0")
        senders = [f for f in fields if f.startswith(b"F")]
        recipients = [f for f in fields if f.startswith(b"T")]
    elif "info" in parts:
        senders = [f for f in parts["info"].split(b"\0")[:1] if f.startswith(b"F")]
        pending = parts.get("local", b"") + parts.get("remote", b"")
        recipients = [f for f in pending.split(b"\0") if f.startswith(b"T")]
    else:
        return None
    if not senders or not recipients:
        return None
    return b"".join(f + b"\0" for f in [senders[0], *recipients]) + b"\0"


def keep_queued(partial: Path, number: str, incoming: Path, envelope: bytes) -> list[Record]:
    """Keep one pending message; its id (queue number, envelope, content) makes requeueing once-only."""
    message_sha = sha256_file(incoming)
    ident = hashlib.sha256(f"{number}\0{message_sha}\0".encode() + envelope).hexdigest()[:32]
    message = partial / "queue" / f"{ident}.msg"
    os.rename(incoming, message)
    env = _write_private(partial, f"queue/{ident}.env", "envelope", envelope)
    return [Record(kind="message", stored=f"queue/{ident}.msg", size=message.stat().st_size,
                   sha256=message_sha, envelope=env.stored), env]
