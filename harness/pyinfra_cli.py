"""Run the pyinfra CLI against a sandbox host exactly as a user would, and read its results."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import sandbox
from qmailhost.sources import PINS

PROJECT = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
LOCAL_MIRROR = Path(os.path.expanduser(os.environ.get("QMAILHOST_LOCAL_MIRROR", "~/.cache/qmailhost/mirror")))


def sources_available() -> bool:
    if os.environ.get("QMAILHOST_DISTFILES"):
        return Path(os.environ["QMAILHOST_DISTFILES"]).is_dir()
    if (LOCAL_MIRROR / "SHA512SUMS").exists():
        return all((LOCAL_MIRROR / pin.filename).exists() for pin in PINS.values())
    default = Path.home() / ".cache/qmailhost/distfiles"
    return all((default / pin.filename).exists() for pin in PINS.values())


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    argv: list[str]

    @property
    def output(self) -> str:
        """Everything pyinfra printed, without colour codes."""
        return re.sub(r"\x1b\[[0-9;]*m", "", self.stdout + self.stderr)

    @property
    def report(self) -> dict:
        """pyinfra's --json document (plan and results)."""
        return json.loads(self.stdout)

    def changed(self, grouped: bool = False) -> list[str]:
        """Names of operations that changed the host (real run) or would (dry run): each its
        own name, or with GROUPED as pyinfra prints it, after its component ("acme | ...")."""
        report = self.report
        if report.get("results"):
            return [_named(op["name"], grouped) for op in report["results"]["operations"] if op["success"]]
        return self.planned(grouped)

    def planned(self, grouped: bool = False) -> list[str]:
        return [_named(op["name"], grouped) for op in self.report["plan"] if op["hosts_with_change"]]


def _named(name: str, grouped: bool) -> str:
    return name if grouped else name.rsplit(" | ", 1)[-1]


def pyinfra(host: sandbox.Host, *args: str, deploy: str = "deploy.py", data: dict | None = None,
            json_output: bool = True, check: bool = True, timeout: float = 1200, env: dict | None = None,
            project: Path = PROJECT) -> Run:
    """`pyinfra [-y] [--json] ARGS... inventory/sandbox.py DEPLOY` against HOST, run in PROJECT
    (another checkout of qmailhost, for a benchmark of an earlier revision)."""
    confirm = [] if "--dry" in args else ["-y"]  # -y would skip the change detection a dry run reports
    argv = [PYINFRA, *confirm, *(["--json"] if json_output else []), *args, "inventory/sandbox.py", deploy]
    environ = {**os.environ, "QMAILHOST_SANDBOX_HOST": host.name, **(env or {})}
    environ["QMAILHOST_SANDBOX_DATA"] = json.dumps({"backup_dir": own_backup_dir(host), **(data or {})})
    result = subprocess.run(argv, cwd=project, env=environ, capture_output=True, text=True, timeout=timeout)
    run = Run(result.returncode, result.stdout, result.stderr, argv)
    if check and result.returncode != 0:
        raise AssertionError(f"pyinfra exited {result.returncode}:\n{run.output[-4000:]}")
    return run


def own_backup_dir(host: sandbox.Host) -> str:
    """Where a test's host keeps its backups unless the test says (backup_dir): a directory of
    that host alone, never the laptop's ~/qmailhost-backups/<hostname>, where a backup of the
    built-in host (also mail.sandbox.test) would hold back every test host's DKIM key."""
    return str(Path(tempfile.gettempdir()) / "qmailhost-test-backups" / f"{host.name}-{host.created:.0f}")


def predicted_and_real(host: sandbox.Host, data: dict) -> tuple[list[str], list[str], set[str]]:
    """A dry run with DATA, then the real run: (operations planned, operations that changed,
    daemontools services whose pid changed), for "the dry run predicts exactly" checks."""
    dry = pyinfra(host, "--dry", data=data)
    pids = host.service_pids()
    real = pyinfra(host, data=data)
    restarted = {service.rsplit("/", 1)[1] for service, pid in host.service_pids().items() if pids.get(service) != pid}
    return sorted(dry.planned()), sorted(real.changed()), restarted


def host_listing(host: sandbox.Host, roots: str = "/etc /usr /var /home /root") -> str:
    """A checksummed listing of the host's files (content, mode, owner, mtime) for change checks;
    not logs, apt's cache, nor what the host's own scheduled checks record between deploys."""
    command = (
        f"find {roots} -xdev \\( -path /var/cache/apt -o -path /var/log -o -path /var/lib/qmailhost/health \\) "
        "-prune -o "
        "\\( -type f -printf '%p %m %U %G %s %T@ ' -exec sh -c 'sha256sum < \"$1\" | cut -c1-64' _ {} \\; \\) "
        "-o \\( ! -type f -printf '%p %y %m %U %G %l\\n' \\) | sort"
    )
    return host.ssh(command, timeout=600).stdout
