"""``./run deploy``: the mail host deployed to the built-in throwaway host, then every check.

1. ``pyinfra -y ARGS inventory/sandbox.py deploy.py``, its own closing checks held back
   (step 3 runs them once, with DNS to ask);
2. ``records.py``: the records the host needs, written as the zone the built-in host's name
   server serves (harness/sandbox.py), with the PTR of its address;
3. ``verify.py``: every status check, the DNS checks and the logins of its test account
   included (inventory/sandbox.py names both for the built-in host).

With ``--dry`` (or ``--help``), only step 1 runs: nothing changes, nothing is written.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

from harness import sandbox

PROJECT = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
INVENTORY = "inventory/sandbox.py"


def _pyinfra(*argv: str, data: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if data:
        env["QMAILHOST_SANDBOX_DATA"] = json.dumps({**json.loads(env.get("QMAILHOST_SANDBOX_DATA") or "{}"), **data})
    return subprocess.run([PYINFRA, *argv], cwd=PROJECT, env=env, **kwargs)


def write_zone(host: sandbox.Host) -> None:
    """records.py's zone, plus the PTR of the host's address, as the name server serves it."""
    printed = _pyinfra("-y", INVENTORY, "records.py", stdout=subprocess.PIPE, text=True, check=True).stdout
    reverse = ipaddress.ip_address(host.address).reverse_pointer
    zone = f"{printed}\n; the built-in host's address points back at its name\n" \
           f"{reverse}. 3600 IN PTR {sandbox.SANDBOX_HOSTNAME}.\n"
    partial = sandbox.zone_file(host).with_suffix(".partial")
    partial.write_text(zone)
    partial.rename(sandbox.zone_file(host))


def main(argv: list[str]) -> int:
    deployed = _pyinfra("-y", *argv, INVENTORY, "deploy.py", data={"verify_after_deploy": False})
    if deployed.returncode != 0 or {"--dry", "--help"} & set(argv):
        return deployed.returncode
    host = sandbox.ensure_builtin()
    write_zone(host)
    return _pyinfra("-y", INVENTORY, "verify.py").returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
