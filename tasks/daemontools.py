"""daemontools (Debian's service backend): each service is a directory with ./run and
./log/run, linked into /etc/service, where svscan (daemontools-run's unit; the
sandbox's init) starts it. tasks/rcd.py is the same interface for NetBSD's rc.d.

A service is restarted (svc -t) only when what it reads at start changed: its run
script plus the inputs its caller names (a config, a certificate's fingerprint,
binaries). The fingerprint is recorded after the restart, so an interrupted run
restarts it next time.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import systemd

from tasks import ops
from tasks.facts import host_state
from tasks.platform import Platform
from tasks.templates import render

_NEW_LINKS: dict[str, list[str]] = {}  # host name -> services this run links for the first time


def supervisor(platform: Platform) -> None:
    """Make sure svscan runs over /etc/service: systemd's daemontools-run unit where systemd runs."""
    if host_state()["systemd"]:
        systemd.service(name="Enable and start daemontools-run (svscan)", service="daemontools-run.service",
                        running=True, enabled=True)


def service(platform: Platform, name: str, run_script: str, start_inputs: list[str]) -> None:
    directory = f"{platform.supervise_dir}/{name}"
    ops.directory(name=f"Create the log directory of {name}", path=f"{platform.log_dir}/{name}",
                  user="qmaill", group="root", mode="750")
    ops.whole_file(name=f"Write the log run script of {name}", dest=f"{directory}/log/run", mode="755",
                   content=render("daemontools/log.run", service=name, log_dir=platform.log_dir))
    ops.whole_file(name=f"Write the run script of {name}", dest=f"{directory}/run", mode="755",
                   content=run_script)
    link = f"{platform.service_dir}/{name}"
    if (ops.managed_path(link) or {}).get("target") != directory:
        _NEW_LINKS.setdefault(host.name, []).append(link)  # decided now: operations may run later
    enable(name=f"Enable service {name}", link=link, directory=directory)
    restart(name, link, [run_script, *start_inputs])


@operation()
def enable(link: str, directory: str):
    """Link DIRECTORY into svscan's directory (settle() then waits for supervise)."""
    current = ops.managed_path(link)
    if current and current.get("target") == directory:
        host.noop(f"{link} is enabled")
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


def restart(name: str, link: str, inputs: list[str], signal: str = "t", why: str = "Restart") -> None:
    ops.stamped(
        name=f"{why} {name}", stamp=f"service-{name}-{signal}", inputs="\n".join(inputs),
        commands=[f"if svok {link} 2>/dev/null; then svc -{signal} {link}; fi"],
        description=f"{why.lower()} {name}",
    )


# The service backend interface (tasks/services.py), as daemontools runs each service.

def qmail_send(platform: Platform, start_inputs: list[str], reload_inputs: list[str]) -> None:
    """qmail-send: restarted when what it reads at start changes, HUP when only RELOAD_INPUTS do."""
    run = render("daemontools/qmail-send.run", qmail_home=platform.qmail_home)
    service(platform, "qmail-send", run, start_inputs=start_inputs)
    restart("qmail-send", f"{platform.service_dir}/qmail-send", reload_inputs, signal="h", why="Reload")


def smtpd(platform: Platform, settings, cdb: str, spamdyke_conf: str) -> None:
    run = render("daemontools/qmail-smtpd.run", port=settings.smtp_port, tcprules=cdb,
                 hostname=settings.hostname, connections=settings.smtp_connections,
                 spamdyke=platform.spamdyke, spamdyke_conf=spamdyke_conf, qmail_home=platform.qmail_home)
    service(platform, "qmail-smtpd", run, start_inputs=[])


def submission(platform: Platform, settings, mode, cdb: str) -> None:
    run = render("daemontools/qmail-ofmipd.run", port=settings.ofmipd_port, tcprules=cdb,
                 submission_port=settings.submission_port, mode=mode.name, description=mode.description,
                 hostname=settings.hostname, connections=settings.submission_connections,
                 program=mode.program(platform, settings))
    service(platform, "qmail-ofmipd", run, start_inputs=[])


def stunnel(platform: Platform, config_path: str, start_inputs: list[str]) -> None:
    run = render("daemontools/stunnel.run", stunnel=platform.stunnel, config=config_path)
    service(platform, "stunnel", run, start_inputs=start_inputs)
