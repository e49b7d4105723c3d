"""Facts: what the host already has, read in one round trip.

``HostState`` gathers everything qmailhost decides on that pyinfra's stock facts do
not cover: build stamps, the fingerprints services were last (re)started with, the
active submission mode, the checksums of secret files, account password salts, the
TLS certificate's subject and whether systemd or svscan runs. Hashes are read from
/etc/shadow (Debian) or /etc/master.passwd (NetBSD: platform data). Secrets never cross
the wire: for a password hash only its salt and the SHA256 of the whole hash are
read, for a key only its SHA256.
"""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

STATE_DIR = "/var/lib/qmailhost"
STAMP_DIR = f"{STATE_DIR}/stamps"
MODE_FILE = f"{STATE_DIR}/submission-mode"

_SCRIPT = r"""
[ -d /run/systemd/system ] && echo "systemd	yes"
pgrep -x svscan >/dev/null 2>&1 && echo "svscan	yes"
for f in {stamps}/*; do [ -f "$f" ] && printf 'stamp\t%s\t%s\n' "${{f##*/}}" "$(cat "$f")"; done
[ -f {mode} ] && printf 'mode\t%s\n' "$(cat {mode})"
for f in {secrets}; do [ -f "$f" ] && printf 'sha256\t%s\t%s\n' "$f" "$({sha256} < "$f" | cut -c1-64)"; done
for u in {users}; do
  h=$({password_field})
  [ -n "$h" ] && printf 'account\t%s\t%s\t%s\n' "$u" "${{h%\$*}}" "$(printf %s "$h" | {sha256} | cut -c1-64)"
done
[ -f {cert} ] && printf 'cert\t%s\n' "$(openssl x509 -noout -subject -nameopt multiline -in {cert} 2>/dev/null \
  | sed -n 's/^ *commonName *= *//p')"
true
"""


class HostState(FactBase):
    """One dict describing qmailhost's state on the host (see the module header)."""

    def command(self, users=(), secrets=(), cert="/nonexistent", sha256="sha256sum",
                password_field='getent shadow "$u" | cut -d: -f2'):
        return _SCRIPT.format(
            stamps=STAMP_DIR, mode=MODE_FILE, cert=shlex.quote(cert), sha256=sha256, password_field=password_field,
            secrets=" ".join(shlex.quote(s) for s in secrets) or "/nonexistent",
            users=" ".join(shlex.quote(u) for u in users) or "''",
        )

    @staticmethod
    def default():
        return _empty()

    def process(self, output):
        state = _empty()
        for line in output:
            kind, _, rest = line.partition("\t")
            fields = rest.split("\t")
            if kind in ("systemd", "svscan"):
                state[kind] = True
            elif kind == "stamp" and len(fields) == 2:
                state["stamps"][fields[0]] = fields[1]
            elif kind == "mode":
                state["mode"] = rest
            elif kind == "sha256" and len(fields) == 2:
                state["sha256"][fields[0]] = fields[1]
            elif kind == "account" and len(fields) == 3:
                state["accounts"][fields[0]] = {"salt": fields[1], "hash_sha256": fields[2]}
            elif kind == "cert":
                state["cert_cn"] = rest
        return state


def _empty() -> dict:
    return {"systemd": False, "svscan": False, "stamps": {}, "mode": None, "sha256": {},
            "accounts": {}, "cert_cn": None}


_STATE_ARGS: dict[str, dict] = {}


def watch(users=(), secrets=(), cert="/nonexistent", shell=None) -> None:
    """Say, once per host before any operation, which accounts and files HostState covers
    (and, for a host that is not Debian, its shell dialect: tasks/platform.py Shell)."""
    from pyinfra import host

    args = {"users": tuple(users), "secrets": tuple(secrets), "cert": cert}
    if shell is not None and shell.sha256 != "sha256sum":
        args.update(sha256=shell.sha256, password_field=shell.password_field)
    _STATE_ARGS[host.name] = args


def host_state() -> dict:
    """The current host's HostState (one round trip, then cached by pyinfra)."""
    from pyinfra import host

    return host.get_fact(HostState, **_STATE_ARGS.get(host.name, {}))
