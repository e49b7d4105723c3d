"""daemontools (Debian's service backend): each service is a directory with ./run and
./log/run, linked into /etc/service, where svscan (daemontools-run's unit; the
sandbox's init) starts it. backends/rcd.py is the same interface for NetBSD's rc.d.

A service is restarted (svc -t) only when what it reads at start changed: its run
script plus the inputs it names (a config, a certificate's fingerprint, binaries);
sent a HUP (svc -h) when only what it re-reads on one changed. The fingerprint is
recorded after the signal, so an interrupted run sends it next time.
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import systemd

from qmailhost import ops
from qmailhost.backends.services import Service
from qmailhost.component import Component, Needs, Probe
from qmailhost.facts import host_state
from qmailhost.platform import Platform

SERVICE_BACKEND = "daemontools"  # found by qmailhost/registry.py under this name
SUPERVISES = True  # a job the host repeats runs as a supervised loop (services.repeat)

# Every service's log: multilog, as qmaill, timestamped, 10 files of 1 MB.
LOG_RUN = """\
#!/bin/sh
# {service}'s log: multilog, as qmaill, timestamped, 10 files of 1 MB.
exec setuidgid qmaill multilog t s1000000 n10 {log_dir}/{service}
"""

_NEW_LINKS: dict[str, list[str]] = {}  # host name -> services this run links for the first time


def _flag(key: str, test: str) -> Probe:
    return Probe(key, lambda platform, settings: f"{test} && echo {key}", bool, bool)


def _down_script(platform: Platform, settings) -> str:
    """The services supervise keeps down (svc -d, by hand): a deploy brings them up again."""
    return (f"svstat {platform.service_dir}/* 2>/dev/null | "
            "awk -F': ' '$2 ~ /^down/ { n = split($1, p, \"/\"); print \"down\\t\" p[n] }'")


COMPONENT = Component(
    name="daemontools",
    needs=lambda _platform, _settings: Needs(packages=("daemontools", "daemontools-run", "procps")),
    probes=(_flag("systemd", "[ -d /run/systemd/system ]"),
            Probe("down", _down_script, lambda lines: {fields[0] for fields in lines if fields}, set)),
    managed_roots=lambda p: (f"3:{p.supervise_dir}", f"1:{p.service_dir}", f"1:{p.log_dir}"),
)


def supervisor(platform: Platform) -> None:
    """Make sure svscan runs over /etc/service: systemd's daemontools-run unit where systemd runs."""
    if host_state()["systemd"]:
        systemd.service(name="Enable and start daemontools-run (svscan)", service="daemontools-run.service",
                        running=True, enabled=True)


def declare(platform: Platform, service: Service) -> None:
    name = service.name
    directory = f"{platform.supervise_dir}/{name}"
    ops.directory(name=f"Create the log directory of {name}", path=f"{platform.log_dir}/{name}",
                  user="qmaill", group="root", mode="750")
    ops.whole_file(name=f"Write the log run script of {name}", dest=f"{directory}/log/run", mode="755",
                   content=LOG_RUN.format(service=name, log_dir=platform.log_dir))
    ops.whole_file(name=f"Write the run script of {name}", dest=f"{directory}/run", mode="755",
                   content=service.run)
    link = f"{platform.service_dir}/{name}"
    fresh = (ops.managed_path(link) or {}).get("target") != directory
    if fresh:
        _NEW_LINKS.setdefault(host.name, []).append(link)  # decided now: operations may run later
    enable(name=f"Enable service {name}", link=link, directory=directory, service=name)
    # A run script that differs on the host (edited by hand, an old one) may be what runs now.
    rewritten = service.rewritten or ops.differs(f"{directory}/run", service.run)
    # A service linked by this run starts from what this run wrote: its stamps are recorded, and
    # no signal is sent (svscan may be starting it that moment, and a process that has not set up
    # its handlers yet dies of a HUP: Dovecot's master does). Else a reload first, a restart after.
    if service.reload_on:
        _signal(name, link, list(service.reload_on), signal="h", why="Reload", rewritten=service.reload_rewritten,
                measured=service.reload_measured, send=not fresh)
    _signal(name, link, [service.run, *service.reads_at_start], rewritten=rewritten, measured=service.measured,
            send=not fresh)
    if service.replaces:
        replaced, _why = service.replaces
        unlinked(name=f"Stop and unlink {replaced}", link=f"{platform.service_dir}/{replaced}")


def retire(platform: Platform, name: str, why: str) -> None:
    """Service NAME no longer runs (WHY: for the operation's name), when it is linked at all."""
    link = f"{platform.service_dir}/{name}"
    if ops.managed_path(link):
        unlinked(name=f"Stop and unlink {name} ({why})", link=link)


@operation()
def unlinked(link: str):
    """The service at LINK is no longer supervised: unlinked, then its supervise told to stop and exit."""
    current = ops.managed_path(link)
    if not current:
        host.noop(f"{link} is not enabled")
        return
    yield f"rm -f {link} && svc -dx {current.get('target', link)} {current.get('target', link)}/log"


@operation()
def enable(link: str, directory: str, service: str):
    """Link DIRECTORY into svscan's directory (settle() then waits for supervise), and keep
    the service up: supervise holds it down only when told to (svc -d by hand), and a deploy
    says the services run."""
    current = ops.managed_path(link)
    if current and current.get("target") == directory:
        if service in host_state().get("down", set()):
            yield f"svc -u {link}"
            return
        host.noop(f"{link} is enabled and up")
        return
    yield f"ln -sfn {directory} {link}.qmailhost-new && mv -fT {link}.qmailhost-new {link}"


def settle(platform: Platform) -> None:
    """Wait, once, until svscan has started every service this run linked (it looks every
    5 s), so the run ends with the services up. Nothing to wait for on a converged host."""
    links = _NEW_LINKS.pop(host.name, [])
    if links:
        wait_until_supervised(name="Wait for svscan to start the new services", links=links)


@operation()
def wait_until_supervised(links: list[str], seconds: int = 20):
    checks = " && ".join(f"svok {link} 2>/dev/null" for link in links)
    yield (f"for i in $(seq {seconds * 10}); do {checks} && exit 0; sleep 0.1; done; "
           f"echo 'svscan did not start {' '.join(links)} within {seconds} s: is svscan running "
           "(daemontools-run)?' >&2; exit 1")


def _signal(name: str, link: str, inputs: list[str], signal: str = "t", why: str = "Restart",
            rewritten: bool = False, measured=None, send: bool = True) -> None:
    ops.stamped(
        name=f"{why} {name}", stamp=f"service-{name}-{signal}", inputs="\n".join(inputs),
        commands=[_svc(link, signal)] if send else [], description=f"{why.lower()} {name}", rewritten=rewritten,
        measured=measured,
    )


def _svc(link: str, signal: str) -> str:
    """Send supervise SIGNAL (t: restart, h: reload) for the service at LINK, if it runs."""
    return f"if svok {link} 2>/dev/null; then svc -{signal} {link}; fi"


def restart_stamp(name: str) -> str:
    """The stamp that records what service NAME was last restarted with."""
    return f"service-{name}-t"


def restart_command(platform: Platform, name: str) -> str:
    """The command restarting service NAME now, if it runs (for restore.py)."""
    return _svc(f"{platform.service_dir}/{name}", "t")


def pause_command(platform: Platform, name: str, seconds: int = 60) -> str:
    """The command stopping service NAME (if it runs) and waiting until it is down, at most
    SECONDS; it fails if the service is still up then (for the backup's copy of the queue)."""
    link = f"{platform.service_dir}/{name}"
    return (f"if svok {link} 2>/dev/null; then svc -d {link}; i=0; while [ $i -lt {seconds} ] && "
            f"svstat {link} | grep -q ': up'; do sleep 1; i=$((i + 1)); done; ! svstat {link} | grep -q ': up'; fi")


def resume_command(platform: Platform, name: str) -> str:
    """The command starting service NAME again after pause_command."""
    return f"if svok {platform.service_dir}/{name} 2>/dev/null; then svc -u {platform.service_dir}/{name}; fi"


def reload_stamp(name: str) -> str:
    """The stamp that records what service NAME was last reloaded (HUP) with."""
    return f"service-{name}-h"


def reload_command(platform: Platform, name: str) -> str:
    """The command reloading (HUP) service NAME now, if it runs (for restore.py)."""
    return _svc(f"{platform.service_dir}/{name}", "h")


# --- for the status checks (read-only) ----------------------------------------------------


def status_script(platform: Platform, services: list) -> str:
    """svstat of each service and its log (LISTENERS' daemontools names)."""
    paths = [f"{platform.service_dir}/{s.name}{log}" for s in services for log in ("", "/log")]
    return f"svstat {' '.join(paths)} 2>&1; true"


_SVSTAT = re.compile(r"^(?P<path>\S+): (?P<status>.*)$")


def parse_status(platform: Platform, services: list, output: str) -> dict[str, dict]:
    """{name or name/log: {"up": bool, "starting": bool, "pid", "seconds", "words"}}."""
    by_path = {m["path"]: m["status"] for line in output.splitlines() if (m := _SVSTAT.match(line))}
    status = {}
    for service in services:
        for log in ("", "/log"):
            words = by_path.get(f"{platform.service_dir}/{service.name}{log}", "is missing")
            pid, seconds = re.search(r"\(pid (\d+)\)", words), re.search(r"(\d+) seconds", words)
            status[service.name + log] = {
                "up": words.startswith("up"), "words": words,
                "starting": "supervise/ok" in words or "want up" in words,
                "pid": pid.group(1) if pid else None, "seconds": int(seconds.group(1)) if seconds else None}
    return status
