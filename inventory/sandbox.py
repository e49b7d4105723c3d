"""The built-in target: a throwaway Debian host on this machine (see harness/sandbox.py).

    pyinfra inventory/sandbox.py deploy.py

brings the local host up if it is not running (as root, on Linux) and deploys to it.
Its test account's password is generated once and kept outside the repository;
`python -m harness.sandbox status` shows it. Environment knobs:

- QMAILHOST_SANDBOX_HOST: target another harness host by name (tests do), not brought up;
- QMAILHOST_SANDBOX_DATA: a JSON object of settings laid over the ones below (tests do);
- QMAILHOST_LOCAL_MIRROR: a directory of distfiles with a SHA512SUMS file, used when
  the upstream sites are out of reach (default ~/.cache/qmailhost/mirror, if present).
"""

import json
import os
from pathlib import Path

from harness import sandbox

_name = os.environ.get("QMAILHOST_SANDBOX_HOST")
if _name:
    _host = sandbox.load(_name)
    if _host is None:
        raise SystemExit(f"inventory/sandbox.py: no sandbox host named {_name!r} is up")
else:
    _host = sandbox.ensure_builtin()

_data = {
    **_host.ssh_data(),
    "hostname": sandbox.SANDBOX_HOSTNAME,
    "domains": [sandbox.SANDBOX_DOMAIN],
    "accounts": [{"name": sandbox.SANDBOX_USER, "password_file": sandbox.sandbox_password_file()}],
    # No DNS inside the sandbox: DNS-based filters would refuse every sender, and a
    # greeting delay would only slow the tests down.
    "spamdyke_filters": {
        "reject_empty_rdns": False,
        "reject_unresolvable_rdns": False,
        "reject_ip_in_cc_rdns": False,
        "dns_blacklists": [],
        "greeting_delay_secs": 0,
    },
    # rspamd asks DNS for every message, and no DNS answers here: tests/test_spam.py turns it on
    # with a name server of its own (dns_forwarders).
    "spam_filter": False,
    "check_upstream_releases": False,  # the sandbox and its tests send nothing beyond this machine
}

if not _name:
    # The built-in host shows every check: its test account logs in, and its name server (on
    # the host side of its veth, serving records.py's zone: ./run deploy writes it) answers.
    _data["verify_account"] = {"name": sandbox.SANDBOX_USER, "password_file": sandbox.sandbox_password_file()}
    _data["dns_server"] = _host.gateway

_mirror = Path(os.path.expanduser(os.environ.get("QMAILHOST_LOCAL_MIRROR", "~/.cache/qmailhost/mirror")))
if not os.environ.get("QMAILHOST_DISTFILES") and (_mirror / "SHA512SUMS").exists():
    _data["distfiles"] = str(_mirror)

_data.update(json.loads(os.environ.get("QMAILHOST_SANDBOX_DATA") or "{}"))

sandbox_hosts = [(sandbox.SANDBOX_HOSTNAME, _data)]
