"""rc.d (NetBSD's service backend): qmail-run's and stunnel's rc.d scripts, one
/etc/rc.conf.d/NAME file per service. Same interface as backends/daemontools.py (see
backends/services.py).

Each file says NAME=YES and sets every variable the service's rc.d script reads, so
the setup does not depend on the defaults of the qmail-run release installed (they
changed: later ones serve 587 with sslserver and authup). The rc.d script is copied
from pkgsrc's examples if the package did not install it (PKG_RCD_SCRIPTS unset).
A service is started when it is not running and restarted only when its rc.conf.d
file or another input it reads at start changed (a stamp, recorded after the
restart); reloaded when only what it re-reads changed.

    qmailsend     qmail-send, logging to syslog
    qmailsmtpd    tcpserver 0:25 -> spamdyke (STARTTLS) -> qmail-smtpd, as qmaild:qmailtls
    qmailofmipd   tcpserver 127.0.0.1:26 -> [spamdyke] -> ofmipd, as ofmipd
    tofmipd       tmda-ofmipd on 127.0.0.1:8025 (submission mode "tmda")
    stunnel       STARTTLS on 587, TLS on 465, in front of the active submission listener
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation

from qmailhost import ops
from qmailhost.backends.services import Service
from qmailhost.facts import host_state
from qmailhost.platform import Platform

SERVICE_BACKEND = "rcd"  # found by qmailhost/registry.py under this name
SUPERVISES = False  # nothing restarts a loop that ended: a job the host repeats is a cron line


class RcdService(FactBase):
    """{"script": bool, "running": bool} of rc.d service SERVICE."""

    def command(self, service, rcd_dir="/etc/rc.d"):
        script = shlex.quote(f"{rcd_dir}/{service}")
        return f"if [ -x {script} ]; then echo script; {script} onestatus >/dev/null 2>&1 && echo running; fi; true"

    @staticmethod
    def default():
        return {"script": False, "running": False}

    def process(self, output):
        return {"script": "script" in output, "running": "running" in output}


@operation()
def script(service: str, rcd_dir: str, examples: str):
    """rc.d script SERVICE is in RCD_DIR (copied from pkgsrc's EXAMPLES when the package did not)."""
    if host.get_fact(RcdService, service=service, rcd_dir=rcd_dir)["script"]:
        host.noop(f"{rcd_dir}/{service} is installed")
        return
    yield f"install -o root -g wheel -m 555 {examples}/{service} {rcd_dir}/{service}"


@operation()
def running(service: str, inputs: str, rcd_dir: str = "/etc/rc.d", rewritten: bool = False, measured=None):
    """SERVICE runs, started with INPUTS: start it when it does not run, restart it when INPUTS
    changed, when REWRITTEN (a file it reads at start differs on the host and this run rewrites
    it) or when the files MEASURED (command, digest now) differ from those it was started with."""
    digest = ops.stamp_digest(inputs)
    stamp = f"service-{service}"
    status = host.get_fact(RcdService, service=service, rcd_dir=rcd_dir)
    wanted = digest if measured is None else f"{digest} {measured[1]}"
    current = host_state()["stamps"].get(stamp) == wanted and (measured is None or measured[1] is not None)
    if status["running"] and current and not rewritten:
        host.noop(f"{service} runs with its current configuration")
        return
    action = "restart" if status["running"] else "start"
    value = digest if measured is None else f'"{digest} $({measured[0]})"'
    yield from ops.stamp_commands(stamp, value, [f"{rcd_dir}/{service} {action}"])


@operation()
def stopped(service: str, rcd_dir: str = "/etc/rc.d"):
    """SERVICE does not run (onestop: it may already be disabled)."""
    if not host.get_fact(RcdService, service=service, rcd_dir=rcd_dir)["running"]:
        host.noop(f"{service} is not running")
        return
    yield f"{rcd_dir}/{service} onestop"


def rc_conf(name: str, description: str, variables, enabled: bool = True) -> str:
    """/etc/rc.conf.d/NAME: NAME=YES|NO, then every variable (values in double quotes, as
    rc.conf has them: $(...) is evaluated when rc.d loads the file)."""
    lines = [f"# {name}: {description}", "# Managed by qmailhost: every variable is set, whatever the rc.d defaults.",
             f"{name}={'YES' if enabled else 'NO'}"]
    lines += [f'{name}_{key}="{value}"' for key, value in variables]
    return "\n".join(lines) + "\n"


def declare(platform: Platform, service: Service) -> None:
    """Enable and run rc.d service NAME with its variables; restart it when they or what it
    reads at start change, reload it when only what it re-reads does."""
    name = service.rcd.name
    script(name=f"Install the rc.d script {name}", service=name, rcd_dir=platform.rcd_dir,
           examples=platform.rcd_examples)
    config = rc_conf(name, service.description, service.rcd.variables)
    path = f"{platform.rc_conf_d}/{name}"
    rewritten = service.rewritten or ops.differs(path, config)  # decided before the file is written
    ops.whole_file(name=f"Configure {name} ({path})", dest=path, content=config)
    if service.reload_on:  # before a restart, as on daemontools: a signal never meets a process starting up
        status = f"{platform.rcd_dir}/{name} onestatus >/dev/null 2>&1"
        ops.stamped(name=f"Reload {name}", stamp=f"service-{name}-h", inputs="\n".join(service.reload_on),
                    commands=[f"if {status}; then {platform.rcd_dir}/{name} reload; fi"],
                    description=f"reload {name}", rewritten=service.reload_rewritten,
                    measured=service.reload_measured)
    running(name=f"Run {name} (restart on change)", service=name, inputs="\n".join([config, *service.reads_at_start]),
            rcd_dir=platform.rcd_dir, rewritten=rewritten, measured=service.measured)
    if service.replaces:
        replaced, why = service.replaces
        disabled(platform, rcd_name(replaced), why)


def retire(platform: Platform, name: str, why: str) -> None:
    """Service NAME no longer runs, when it has an rc.conf.d file at all (asked of the host: no
    managed tree lists /etc/rc.conf.d)."""
    if ops.managed_file(f"{platform.rc_conf_d}/{rcd_name(name)}"):
        disabled(platform, rcd_name(name), why)


def disabled(platform: Platform, name: str, why: str) -> None:
    """rc.d service NAME is disabled (NAME=NO in its own rc.conf.d file) and stopped."""
    ops.whole_file(name=f"Disable {name} ({platform.rc_conf_d}/{name})", dest=f"{platform.rc_conf_d}/{name}",
                   content=rc_conf(name, why, [], enabled=False))
    stopped(name=f"Stop {name}", service=name, rcd_dir=platform.rcd_dir)


def rcd_name(name: str) -> str:
    """qmail-run's name for a daemontools-style service name (qmail-ofmipd -> qmailofmipd)."""
    return name.replace("-", "")


def logging(tag: str) -> list[tuple[str, str]]:
    """qmail-run's variables for a service logging to syslog as nbqmail/TAG."""
    return [("log", "YES"), ("logcmd", f"logger -t nbqmail/{tag} -p mail.info")]


def tcpserver(platform: Platform, hostname: str, user: str, host_: str, port: int, cdb: str,
              datalimit: int, group: str | None = None, env: str = "") -> list[tuple[str, str]]:
    """The tcpserver variables qmailsmtpd and qmailofmipd share: no ident or DNS lookups,
    the host name as local name, the service's user and group (numeric, looked up when rc.d
    loads; GROUP: another group than the user's own), ENV: the service's environment."""
    gid = f"$(getent group {group} | cut -d: -f3)" if group else f"$(id -g {user})"
    return [
        ("postenv", env),
        ("datalimit", str(datalimit)),
        ("pretcpserver", ""),
        ("tcpserver", f"{platform.prefix}/bin/tcpserver"),
        ("tcpflags", f"-v -R -H -l {hostname} -u $(id -u {user}) -g {gid}"),
        ("tcphost", host_),
        ("tcpport", str(port)),
        ("tcprules", cdb.removesuffix(".cdb")),
        ("autocdb", "NO"),  # qmailhost compiles the cdb when the rules change (qmailhost/tcprules.py)
    ]


def supervisor(platform: Platform) -> None:
    """rc(8) starts services; the base system's MTA (postfix) must leave port 25 to qmail."""
    for name in platform.conflicting_services:
        disabled(platform, name, "the base system's MTA, replaced by qmail")


def settle(platform: Platform) -> None:
    """rc.d scripts start their services synchronously: nothing to wait for."""


def restart_stamp(name: str) -> str:
    """The stamp that records what service NAME was last (re)started with."""
    return f"service-{rcd_name(name)}"


def restart_command(platform: Platform, name: str) -> str:
    """The command restarting service NAME now, if it runs (for restore.py)."""
    script = f"{platform.rcd_dir}/{rcd_name(name)}"
    return f"if {script} onestatus >/dev/null 2>&1; then {script} restart; fi"


def pause_command(platform: Platform, name: str, seconds: int = 60) -> str:
    """The command stopping service NAME if it runs (rc.d's stop waits for it to end); true when
    it does not run (for the backup's copy of the queue)."""
    script = f"{platform.rcd_dir}/{rcd_name(name)}"
    return f"if {script} onestatus >/dev/null 2>&1; then {script} onestop; fi"


def resume_command(platform: Platform, name: str) -> str:
    """The command starting service NAME again after pause_command (if it is enabled)."""
    script = f"{platform.rcd_dir}/{rcd_name(name)}"
    return f"{script} onestatus >/dev/null 2>&1 || {script} start"


def reload_stamp(name: str) -> str:
    """The stamp that records what service NAME was last reloaded with."""
    return f"service-{rcd_name(name)}-h"


def reload_command(platform: Platform, name: str) -> str:
    """The command reloading service NAME now, if it runs (for restore.py), as declare() does."""
    script = f"{platform.rcd_dir}/{rcd_name(name)}"
    return f"if {script} onestatus >/dev/null 2>&1; then {script} reload; fi"


# --- for the status checks (read-only) ----------------------------------------------------


def status_script(platform: Platform, services: list) -> str:
    """onestatus of each service's rc.d script (it prints "NAME is running as pid N.")."""
    return "; ".join(f"printf '%s\\t' {s.rcd_name}; {platform.rcd_dir}/{s.rcd_name} onestatus 2>&1 | head -n 1"
                     for s in services) + "; true"


def parse_status(platform: Platform, services: list, output: str) -> dict[str, dict]:
    """{name: {"up", "starting", "pid", "seconds", "words"}} from onestatus (no uptime on rc.d)."""
    lines = dict(line.split("\t", 1) for line in output.splitlines() if "\t" in line)
    status = {}
    for service in services:
        words = lines.get(service.rcd_name, "").strip() or "is missing"
        pid = re.search(r"running as pid (\d+)", words)
        status[service.name] = {"up": bool(pid), "words": words, "starting": False,
                                "pid": pid.group(1) if pid else None, "seconds": None}
    return status
