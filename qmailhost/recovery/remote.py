"""The SSH side: the host reached by OpenSSH's ssh, for scripts and tar streams.

pyinfra's files.get and files.put make one SFTP round trip per file, and its shell
commands return decoded text lines, unfit for binary data. So backup and restore run
their scripts and tar streams through a Remote: OpenSSH's `ssh`, run on the laptop with
the inventory's ssh_* host data (key authentication only, remote_for). A failure is one
RecoveryError line, the telling line of the host's error output; _records splits what a
script prints into its records (tab-separated fields, each record NUL- or newline-ended).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from qmailhost.recovery.common import RecoveryError
from qmailhost.settings import SettingsError

# --- the SSH side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """The host reached by OpenSSH's ssh with the inventory's ssh_* data, for streams."""

    name: str
    argv: tuple[str, ...]

    def command(self, script: str) -> list[str]:
        return [*self.argv, "sh -c " + shlex.quote(script)]

    def run(self, script: str, what: str) -> bytes:
        """SCRIPT's stdout (bytes); a one-line RecoveryError when it fails."""
        result = subprocess.run(self.command(script), stdin=subprocess.DEVNULL, capture_output=True)
        if result.returncode != 0:
            raise RecoveryError(f"host {self.name}: {what} failed (exit {result.returncode}): "
                                f"{_last_line(result.stderr)}")
        return result.stdout

    @contextlib.contextmanager
    def output(self, script: str, feed: bytes, what: str) -> Iterator[BinaryIO]:
        """SCRIPT's stdout as a stream, while FEED goes to its stdin (from another thread: the
        two pipes must flow at once). Exit status 1, "a file changed or vanished while read"
        for tar and pax, is accepted; any other failure is one RecoveryError line."""
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(self.command(script), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=errors)
            feeder = threading.Thread(target=_feed, args=(process.stdin, feed), daemon=True)
            feeder.start()
            try:
                yield process.stdout
                process.stdout.read()
            except BaseException:
                if _exit_status(process) in (0, 1, None):
                    raise  # our side failed: that error is the one to show
            finally:
                feeder.join()
                status = process.wait()
            errors.seek(0)
            if status not in (0, 1):
                raise RecoveryError(f"host {self.name}: {what} failed (exit {status}): {_last_line(errors.read())}")

    @contextlib.contextmanager
    def input(self, script: str, what: str) -> Iterator[BinaryIO]:
        """SCRIPT's stdin as a stream; a one-line RecoveryError when SCRIPT fails or ends early."""
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(self.command(script), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=errors)
            cut_off = False
            try:
                yield process.stdin
            except BrokenPipeError:
                cut_off = True  # the host side ended early: its status and error output say why
            finally:
                with contextlib.suppress(OSError):
                    process.stdin.close()
                status = process.wait()
            errors.seek(0)
            if status != 0 or cut_off:
                raise RecoveryError(f"host {self.name}: {what} failed (exit {status}): {_last_line(errors.read())}")


_SSH_OPTIONS = {
    "ssh_port": lambda v: ["-p", str(v)],
    "ssh_user": lambda v: ["-l", str(v)],
    "ssh_key": lambda v: ["-i", os.path.expanduser(str(v)), "-o", "IdentitiesOnly=yes"],
    "ssh_config_file": lambda v: ["-F", os.path.expanduser(str(v))],
    "ssh_known_hosts_file": lambda v: ["-o", f"UserKnownHostsFile={os.path.expanduser(str(v))}"],
    "ssh_strict_host_key_checking": lambda v: ["-o", f"StrictHostKeyChecking={ {'off': 'no'}.get(v, v)}"],
}


def remote_for(data: dict, name: str) -> Remote:
    """A Remote from pyinfra host data (the same data the deploy connects with)."""
    if data.get("ssh_password"):
        raise SettingsError("ssh_password", "backup and restore stream over OpenSSH with keys only",
                            "set ssh_key (or load the key into an ssh agent)")
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR",
            "-o", "ServerAliveInterval=30"]
    for key, flags in _SSH_OPTIONS.items():
        if data.get(key) not in (None, ""):
            argv += flags(data[key])
    if data.get("ssh_allow_agent") is False:
        argv += ["-o", "IdentityAgent=none"]
    return Remote(name, (*argv, "--", str(data.get("ssh_hostname") or name)))


def _last_line(stderr: bytes) -> str:
    """The telling line of an error output (not tar's closing "Exiting with failure status")."""
    lines = [line for line in stderr.decode(errors="replace").strip().splitlines()
             if "Exiting with failure status" not in line]
    return lines[-1] if lines else "no error output"


def _exit_status(process: subprocess.Popen) -> int | None:
    """The status of a process that is ending anyway; None (after killing it) if it goes on."""
    try:
        return process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        return None


def _feed(pipe, data: bytes) -> None:
    with contextlib.suppress(OSError):
        pipe.write(data)
    with contextlib.suppress(OSError):
        pipe.close()


def _records(output: bytes, end: str = "\0") -> Iterator[list[str]]:
    for raw in output.split(end.encode()):
        if raw:
            yield raw.decode(errors="surrogateescape").split("\t", 7)
