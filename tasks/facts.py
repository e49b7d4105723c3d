"""Facts: what the host already has, read in one round trip.

``HostState`` gathers everything qmailhost decides on that pyinfra's stock facts do
not cover: build stamps, the fingerprints services were last (re)started with, the
active submission mode, account password salts, the TLS certificate's subject and
whether systemd or svscan runs. Hashes are read from /etc/shadow (Debian) or
/etc/master.passwd (NetBSD: platform data), but never cross the wire: only a hash's
salt and the SHA256 of the whole hash are read.
"""

from __future__ import annotations

import shlex
import weakref

from pyinfra.api import FactBase

STATE_DIR = "/var/lib/qmailhost"
STAMP_DIR = f"{STATE_DIR}/stamps"
MODE_FILE = f"{STATE_DIR}/submission-mode"

_SCRIPT = r"""
[ -d /run/systemd/system ] && echo "systemd	yes"
pgrep -x svscan >/dev/null 2>&1 && echo "svscan	yes"
for f in {stamps}/*; do [ -f "$f" ] && printf 'stamp\t%s\t%s\n' "${{f##*/}}" "$(cat "$f")"; done
[ -f {mode} ] && printf 'mode\t%s\n' "$(cat {mode})"
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

    def command(self, users=(), cert="/nonexistent", sha256="sha256sum",
                password_field='getent shadow "$u" | cut -d: -f2'):
        return _SCRIPT.format(
            stamps=STAMP_DIR, mode=MODE_FILE, cert=shlex.quote(cert), sha256=sha256, password_field=password_field,
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
            elif kind == "account" and len(fields) == 3:
                state["accounts"][fields[0]] = {"salt": fields[1], "hash_sha256": fields[2]}
            elif kind == "cert":
                state["cert_cn"] = rest
        return state


def _empty() -> dict:
    return {"systemd": False, "svscan": False, "stamps": {}, "mode": None,
            "accounts": {}, "cert_cn": None}


_STATE_ARGS: dict[str, dict] = {}


def watch(users=(), cert="/nonexistent", shell=None) -> None:
    """Say, once per host before any operation, which accounts and files HostState covers
    (and, for a host that is not Debian, its shell dialect: tasks/platform.py Shell)."""
    from pyinfra import host

    args = {"users": tuple(users), "cert": cert}
    if shell is not None and shell.sha256 != "sha256sum":
        args.update(sha256=shell.sha256, password_field=shell.password_field)
    _STATE_ARGS[host.name] = args


def host_state() -> dict:
    """The current host's HostState (one round trip per run)."""
    from pyinfra import host

    return cached_fact(HostState, **_STATE_ARGS.get(host.name, {}))


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pyinfra State -> {key: fact}


def cached_fact(fact_class, **arguments):
    """host.get_fact, asked once per host and run. pyinfra 3 asks the host again for
    every operation; qmailhost plans each operation against the host as it was when the
    run began (no two operations manage the same path), so once is enough, and a
    converged run costs a handful of round trips instead of one per file."""
    from pyinfra import host

    per_state = _CACHE.setdefault(host.state, {})
    key = (host.name, fact_class.__name__, tuple(sorted((k, repr(v)) for k, v in arguments.items())))
    if key not in per_state:
        per_state[key] = host.get_fact(fact_class, **arguments)
    return per_state[key]


class ManagedTree(FactBase):
    """Every file, directory and link under qmailhost's managed roots, in one round trip.

    ROOTS are "DEPTH:PATH" (PATH may hold a shell glob such as /home/*/Maildir): what
    find(1) lists to that depth. Answers {path: {"type": "file" | "dir" | "link",
    "sha256", "mode", "user", "group", "target"}}; a covered path that is missing is
    absent. Mail is never listed: Maildirs are covered to their cur/new/tmp only."""

    def command(self, roots, sha256="sha256sum", stat="stat -c '%a %U %G'", gnu=False):
        finds = [f"find {root.split(':', 1)[1]} -maxdepth {root.split(':', 1)[0]}" for root in roots]
        if gnu:  # GNU find and sha256sum: the whole tree in a few processes, however many files
            kinds = ("\\( -type l -printf 'L\\t%p\\t%l\\n' \\) -o \\( -type d -printf 'D\\t%p\\t%m %u %g\\n' \\) "
                     "-o \\( -type f -printf 'F\\t%p\\t%m %u %g\\n' \\)")
            listing = "\n".join(f"{find} {kinds} 2>/dev/null" for find in finds)
            files = "; ".join(f"{find} -type f -print0 2>/dev/null" for find in finds)
            return (f"{listing}\n{{ {files}; }} | xargs -0 -r sha256sum "
                    "| sed 's/^\\([0-9a-f]\\{64\\}\\)  /S\\t\\1\\t/'; true")
        listed = "; ".join(f"{find} 2>/dev/null" for find in finds)
        return (
            f"{{ {listed}; }} | while read -r p; do\n"
            f"  if [ -L \"$p\" ]; then printf 'L\\t%s\\t%s\\n' \"$p\" \"$(readlink \"$p\")\"\n"
            f"  elif [ -d \"$p\" ]; then printf 'D\\t%s\\t%s\\n' \"$p\" \"$({stat} \"$p\")\"\n"
            f"  elif [ -f \"$p\" ]; then printf 'F\\t%s\\t%s\\t%s\\n' \"$p\" \"$({stat} \"$p\")\" "
            f"\"$({sha256} < \"$p\" | cut -c1-64)\"\n"
            f"  fi\ndone; true"
        )

    @staticmethod
    def default():
        return {}

    def process(self, output):
        tree, sums = {}, {}
        for line in output:
            fields = line.split("\t")
            if fields[0] == "S" and len(fields) == 3:
                sums[fields[2]] = fields[1]
            elif fields[0] == "L" and len(fields) == 3:
                tree[fields[1]] = {"type": "link", "target": fields[2]}
            elif fields[0] in ("D", "F") and len(fields) >= 3 and len(fields[2].split()) == 3:
                mode, user, group = fields[2].split()
                entry = {"type": "dir" if fields[0] == "D" else "file", "mode": mode.lstrip("0") or "0",
                         "user": user, "group": group}
                if fields[0] == "F" and len(fields) == 4:
                    entry["sha256"] = fields[3]
                tree[fields[1]] = entry
        for path, digest in sums.items():
            if path in tree:
                tree[path]["sha256"] = digest
        return tree


def covered(path: str, roots: tuple[str, ...]) -> bool:
    """Does ManagedTree(ROOTS) list PATH when it exists?"""
    from fnmatch import fnmatchcase

    for root in roots:
        depth, top = root.split(":", 1)
        parts, top_parts = path.rstrip("/").split("/"), top.rstrip("/").split("/")
        if len(parts) >= len(top_parts) and len(parts) - len(top_parts) <= int(depth) and \
                all(fnmatchcase(p, t) for p, t in zip(parts, top_parts, strict=False)):
            return True
    return False
