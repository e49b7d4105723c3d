"""daemontools: each service is a directory with ./run and ./log/run, linked into
/etc/service, where svscan (daemontools-run's unit; the sandbox's init) starts it.

A service is restarted (svc -t) only when what it reads at start changed: its run
script plus the inputs its caller names (a config, a certificate's fingerprint,
binaries). The fingerprint is recorded after the restart, so an interrupted run
restarts it next time.
"""

from __future__ import annotations

from pyinfra.operations import files, systemd

from tasks import ops
from tasks.facts import host_state
from tasks.platform import Platform
from tasks.templates import render


def supervisor(platform: Platform) -> None:
    """Make sure svscan runs over /etc/service: systemd's daemontools-run unit where systemd runs."""
    if host_state()["systemd"]:
        systemd.service(name="Enable and start daemontools-run (svscan)", service="daemontools-run.service",
                        running=True, enabled=True)


def service(platform: Platform, name: str, run_script: str, start_inputs: list[str]) -> None:
    directory = f"{platform.supervise_dir}/{name}"
    files.directory(name=f"Create the log directory of {name}", path=f"{platform.log_dir}/{name}",
                    user="qmaill", group="root", mode="750")
    ops.whole_file(name=f"Write the log run script of {name}", dest=f"{directory}/log/run", mode="755",
                   content=render("daemontools/log.run", service=name, log_dir=platform.log_dir))
    ops.whole_file(name=f"Write the run script of {name}", dest=f"{directory}/run", mode="755",
                   content=run_script)
    link = f"{platform.service_dir}/{name}"
    files.link(name=f"Enable service {name}", path=link, target=directory)
    restart(name, link, [run_script, *start_inputs])


def restart(name: str, link: str, inputs: list[str], signal: str = "t", why: str = "Restart") -> None:
    ops.stamped(
        name=f"{why} {name}", stamp=f"service-{name}-{signal}", inputs="\n".join(inputs),
        commands=[f"if svok {link} 2>/dev/null; then svc -{signal} {link}; fi"],
        description=f"{why.lower()} {name}",
    )
