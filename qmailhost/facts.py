"""Facts: what the host already has, read in one round trip.

``HostState`` gathers everything qmailhost decides on that pyinfra's stock facts do
not cover, from the probes the components declare (qmailhost/component.py ``Probe``): build
stamps (here), whether systemd or svscan runs (the daemontools backend), the active
submission mode, account password salts, the TLS certificate's subject, ... Each probe
prints lines "KEY<TAB>fields" and parses its own. Hashes never cross the wire: only a
hash's salt and the SHA256 of the whole hash are read (see accounts).

``ManagedTree`` lists every file, directory and link under the roots the components
manage, in one round trip, on platforms whose tools do it cheaply.
"""

from __future__ import annotations

import weakref

from pyinfra.api import FactBase

from qmailhost.component import Component, Probe
from qmailhost.registry import every_probe, for_platform

STATE_DIR = "/var/lib/qmailhost"
STAMP_DIR = f"{STATE_DIR}/stamps"


def _stamps(lines: list[list[str]]) -> dict[str, str]:
    return {fields[0]: fields[1] for fields in lines if len(fields) == 2}


STAMPS = Probe(
    "stamps",
    lambda platform, settings: f"for f in {STAMP_DIR}/*; do [ -f \"$f\" ] && "
                               "printf 'stamps\\t%s\\t%s\\n' \"${f##*/}\" \"$(cat \"$f\")\"; done",
    _stamps, dict)
# qmailhost's own state (stamps, the mode, build scripts), its config files and tcprules.
COMPONENT = Component(name="state", probes=(STAMPS,), managed_roots=lambda p: (
    f"2:{STATE_DIR}", f"2:{p.config_dir}", f"1:{p.tcprules_dir}"))


class HostState(FactBase):
    """One dict describing qmailhost's state on the host: {probe key: its parsed lines}
    for every probe any component declares (a probe that printed nothing: its default)."""

    def command(self, script="true"):
        return script + "\ntrue"

    @staticmethod
    def default():
        return HostState().process([])

    def process(self, output):
        lines: dict[str, list[list[str]]] = {}
        for line in output:
            kind, _, rest = line.partition("\t")
            lines.setdefault(kind, []).append(rest.split("\t") if rest else [])
        return {probe.key: probe.parse(lines[probe.key]) if probe.key in lines else probe.default()
                for probe in every_probe()}


_SCRIPTS: dict[str, str] = {}  # host name -> its HostState script


def watch(settings, platform) -> None:
    """Say, once per host before any operation, what HostState runs: every probe the
    components (and the platform's service backend) declare, in the platform's dialect."""
    from pyinfra import host

    probes = [probe for component in for_platform(platform) for probe in component.probes]
    _SCRIPTS[host.name] = "\n".join(probe.script(platform, settings) for probe in probes)


def host_state() -> dict:
    """The current host's HostState (one round trip per run)."""
    from pyinfra import host

    return cached_fact(HostState, script=_SCRIPTS.get(host.name, "true"))


def managed_roots(platform) -> tuple[str, ...]:
    """What one ManagedTree fact lists (DEPTH:PATH) on PLATFORM: every component's roots."""
    if not platform.lists_managed_tree:
        return ()
    return tuple(root for component in for_platform(platform) for root in component.managed_roots(platform))


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
