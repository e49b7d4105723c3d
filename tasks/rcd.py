"""rc.d (NetBSD's service backend): qmail-run's and stunnel's rc.d scripts, one
/etc/rc.conf.d/NAME file per service.

Each file says NAME=YES and sets every variable the service's rc.d script reads, so
the setup does not depend on the defaults of the qmail-run release installed (they
changed: later ones serve 587 with sslserver and authup). The rc.d script is copied
from pkgsrc's examples if the package did not install it (PKG_RCD_SCRIPTS unset).
A service is started when it is not running and restarted only when its rc.conf.d
file or another input it reads at start changed (a stamp, recorded after the
restart). Same interface as tasks/daemontools.py (see tasks/services.py).

    qmailsend     qmail-send, logging to syslog
    qmailsmtpd    tcpserver 0:25 -> spamdyke -> qmail-smtpd, as qmaild
    qmailofmipd   tcpserver 127.0.0.1:26 -> [spamdyke] -> ofmipd, as ofmipd
    tofmipd       tmda-ofmipd on 127.0.0.1:8025 (submission mode "tmda")
    stunnel       STARTTLS on 587 in front of the active submission listener
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import FactBase, operation

from tasks import ops
from tasks.facts import host_state
from tasks.platform import Platform


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
def running(service: str, inputs: str, rcd_dir: str = "/etc/rc.d"):
    """SERVICE runs, started with INPUTS: start it when it does not run, restart it when INPUTS changed."""
    digest = ops.stamp_digest(inputs)
    stamp = f"service-{service}"
    status = host.get_fact(RcdService, service=service, rcd_dir=rcd_dir)
    if status["running"] and host_state()["stamps"].get(stamp) == digest:
        host.noop(f"{service} runs with its current configuration")
        return
    action = "restart" if status["running"] else "start"
    yield from ops.stamp_commands(stamp, digest, [f"{rcd_dir}/{service} {action}"])


@operation()
def stopped(service: str, rcd_dir: str = "/etc/rc.d"):
    """SERVICE does not run (onestop: it may already be disabled)."""
    if not host.get_fact(RcdService, service=service, rcd_dir=rcd_dir)["running"]:
        host.noop(f"{service} is not running")
        return
    yield f"{rcd_dir}/{service} onestop"


def rc_conf(name: str, description: str, variables: list[tuple[str, str]], enabled: bool = True) -> str:
    """/etc/rc.conf.d/NAME: NAME=YES|NO, then every variable (values in double quotes, as
    rc.conf has them: $(...) is evaluated when rc.d loads the file)."""
    lines = [f"# {name}: {description}", "# Managed by qmailhost: every variable is set, whatever the rc.d defaults.",
             f"{name}={'YES' if enabled else 'NO'}"]
    lines += [f'{name}_{key}="{value}"' for key, value in variables]
    return "\n".join(lines) + "\n"


def service(platform: Platform, name: str, description: str, variables: list[tuple[str, str]],
            start_inputs: list[str]) -> None:
    """Enable and run rc.d service NAME with VARIABLES; restart it when they or START_INPUTS change."""
    script(name=f"Install the rc.d script {name}", service=name, rcd_dir=platform.rcd_dir,
           examples=platform.rcd_examples)
    config = rc_conf(name, description, variables)
    ops.whole_file(name=f"Configure {name} ({platform.rc_conf_d}/{name})", dest=f"{platform.rc_conf_d}/{name}",
                   content=config)
    running(name=f"Run {name} (restart on change)", service=name, inputs="\n".join([config, *start_inputs]),
            rcd_dir=platform.rcd_dir)


def disabled(platform: Platform, name: str, why: str) -> None:
    """rc.d service NAME is disabled (NAME=NO in its own rc.conf.d file) and stopped."""
    ops.whole_file(name=f"Disable {name} ({platform.rc_conf_d}/{name})", dest=f"{platform.rc_conf_d}/{name}",
                   content=rc_conf(name, why, [], enabled=False))
    stopped(name=f"Stop {name}", service=name, rcd_dir=platform.rcd_dir)


def _logging(tag: str) -> list[tuple[str, str]]:
    return [("log", "YES"), ("logcmd", f"logger -t nbqmail/{tag} -p mail.info")]


def _tcpserver(platform: Platform, hostname: str, user: str, host_: str, port: int, cdb: str,
               datalimit: int) -> list[tuple[str, str]]:
    """The tcpserver variables qmailsmtpd and qmailofmipd share: no ident or DNS lookups,
    the host name as local name, the service's user (numeric, looked up when rc.d loads)."""
    return [
        ("postenv", ""),
        ("datalimit", str(datalimit)),
        ("pretcpserver", ""),
        ("tcpserver", f"{platform.prefix}/bin/tcpserver"),
        ("tcpflags", f"-v -R -H -l {hostname} -u $(id -u {user}) -g $(id -g {user})"),
        ("tcphost", host_),
        ("tcpport", str(port)),
        ("tcprules", cdb.removesuffix(".cdb")),
        ("autocdb", "NO"),  # qmailhost compiles the cdb when the rules change (tasks/tcprules.py)
    ]


# The service backend interface (tasks/services.py).

def supervisor(platform: Platform) -> None:
    """rc(8) starts services; the base system's MTA (postfix) must leave port 25 to qmail."""
    for name in platform.conflicting_services:
        disabled(platform, name, "the base system's MTA, replaced by qmail")


def qmail_send(platform: Platform, start_inputs: list[str], reload_inputs: list[str]) -> None:
    service(platform, "qmailsend", "qmail-send, delivering the queue (locally to ./Maildir/)", [
        ("postenv", f"PATH={platform.qmail_bin}:/usr/bin:/bin"),
        ("defaultdelivery", "./Maildir/"),
        *_logging("send"),
    ], start_inputs)
    ops.stamped(
        name="Reload qmailsend", stamp="service-qmailsend-h", inputs="\n".join(reload_inputs),
        commands=[f"if {platform.rcd_dir}/qmailsend onestatus >/dev/null 2>&1; then "
                  f"{platform.rcd_dir}/qmailsend reload; fi"],
        description="reload qmailsend",
    )


def smtpd(platform: Platform, settings, cdb: str, spamdyke_conf: str) -> None:
    service(platform, "qmailsmtpd", f"qmail-smtpd on port {settings.smtp_port} behind spamdyke's filters", [
        *_tcpserver(platform, settings.hostname, "qmaild", "0", settings.smtp_port, cdb, 64_000_000),
        ("presmtpd", f"{platform.spamdyke} -f {spamdyke_conf}"),
        ("smtpdcmd", f"{platform.qmail_bin}/qmail-smtpd"),
        ("postsmtpd", ""),
        *_logging("smtpd"),
        ("tls", "NO"),  # stunnel ends TLS; port 25 offers no STARTTLS (as on Debian)
    ], start_inputs=[])


def _ofmipd(platform: Platform, settings, mode, cdb: str) -> None:
    service(platform, "qmailofmipd", f"mail submission on 127.0.0.1:{settings.ofmipd_port} behind stunnel; "
            f"mode {mode.name!r}: {mode.description}", [
        *_tcpserver(platform, settings.hostname, "ofmipd", "127.0.0.1", settings.ofmipd_port, cdb, 180_000_000),
        ("precheckpassword", ""),
        ("checkpassword", ""),
        ("preofmipd", mode.wrapper(platform)),
        ("ofmipdcmd", mode.ofmipd(platform)),
        ("postofmipd", mode.ofmipd_args(platform, settings)),
        *_logging("ofmipd"),
        ("tls", "NO"),  # stunnel ends TLS in front of it
    ], start_inputs=[])


def _tmda_ofmipd(platform: Platform, settings, mode, cdb: str) -> None:
    service(platform, "tofmipd", f"TMDA's tmda-ofmipd on 127.0.0.1:{mode.listener_port}; mode {mode.name!r}", [
        ("flags", f"-p 127.0.0.1:{mode.listener_port}"),
    ], start_inputs=[])
    disabled(platform, "qmailofmipd", f"submission mode {mode.name!r}: tmda-ofmipd takes submissions")


SUBMISSION = {"ofmipd": _ofmipd, "tmda-ofmipd": _tmda_ofmipd}


def submission(platform: Platform, settings, mode, cdb: str) -> None:
    SUBMISSION[mode.listener](platform, settings, mode, cdb)


def stunnel(platform: Platform, config_path: str, start_inputs: list[str]) -> None:
    service(platform, "stunnel", "STARTTLS on the submission port", [("flags", config_path)], start_inputs)


def settle(platform: Platform) -> None:
    """rc.d scripts start their services synchronously: nothing to wait for."""
