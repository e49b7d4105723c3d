"""Recovery's common ground: its one error, and the options its settings give.

RecoveryError is how backup and restore refuse or fail, in one line (a PyinfraError).
Options is what the recovery settings (declared in the package, COMPONENT) say: where
backups go, which one restore puts back, whether the queue is carried. Every other
recovery module imports from here; this one imports none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyinfra.api.exceptions import PyinfraError

from qmailhost.settings import Settings


class RecoveryError(PyinfraError):
    """A refusal or failure of backup or restore, in one line."""


# --- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    backup_root: Path
    restore_from: Path | None
    backup_queue: bool


def options(settings: Settings) -> Options:
    """Where backups go and which one restore puts back, from the settings."""
    root = settings.backup_dir or f"~/qmailhost-backups/{settings.hostname}"
    return Options(Path(os.path.expanduser(str(root))), settings.restore_from, settings.backup_queue)
