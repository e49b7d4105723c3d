"""What is backed up: the components' BackupParts, as words for the host's shell.

Each component (and the platform's service backend) declares its BackupPart beside its
code (qmailhost/component.py): accounts, every account's Maildir; tls, the self-signed
pair; tmda, the TMDA archive; ... A part's paths are shell words such as ~alice/Maildir,
expanded on the host: shell_word keeps a ~user prefix unquoted and quotes the rest, and
refuses anything else that is not absolute.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from qmailhost.component import BackupPart
from qmailhost.platform import Platform
from qmailhost.recovery.common import RecoveryError
from qmailhost.registry import for_platform
from qmailhost.settings import Settings

# --- what is backed up: the components' parts, in the host's shell -----------------------


_TILDE = re.compile(r"~([A-Za-z0-9_][A-Za-z0-9_.-]*)(/.*)?")


def backup_parts(platform: Platform) -> list[BackupPart]:
    """The BackupPart of every component (and of the platform's service backend), in order."""
    return [component.backup for component in for_platform(platform) if component.backup]


def part_paths(parts: Iterable[BackupPart], settings: Settings, platform: Platform) -> list[str]:
    return [path for part in parts for path in part.paths(settings, platform)]


def shell_word(path: str) -> str:
    """PATH as one shell word for the host's sh: "~user/rest" keeps its ~user prefix unquoted
    (tilde expansion, to that user's home) and quotes the rest; anything else is quoted whole."""
    if path.startswith("~"):
        match = _TILDE.fullmatch(path)
        if not match:
            raise RecoveryError(f"refusing the backup path {path!r}: ~ must name a user")
        rest = match[2] or ""
        return f"~{match[1]}" + ("/" + shlex.quote(rest[1:]) if rest[1:] else rest)
    if not path.startswith("/"):
        raise RecoveryError(f"refusing the backup path {path!r}: not absolute")
    return shlex.quote(path)


def _words(paths: Iterable[str]) -> str:
    return " ".join(shell_word(p) for p in paths) or "''"


def _printf_end(end: str) -> str:
    """How printf(1) spells the record end END ("\\0" or "\\n")."""
    return {"\0": "\\0", "\n": "\\n"}[end]
