"""Services: one description of what a component runs, for every service backend.

A component describes each of its services once (``Service``: its name, what it runs,
what it reads at start, and the rc.d variables NetBSD's scripts need) and hands it to
``declare``; the platform's backend, chosen once from its data, makes it so:
backends/daemontools.py (Debian: run scripts under svscan) or backends/rcd.py (NetBSD:
qmail-run's and stunnel's rc.d scripts, one /etc/rc.conf.d file each). Every backend:

- ``supervisor(platform)``: what must run before any service (svscan; or stopping the
  base system's MTA so port 25 is free);
- ``declare(platform, service)``: the service is defined, enabled and running, restarted
  when its definition or what it reads at start changed (as meant: its recorded inputs;
  or on the host: a file this run rewrites because it differs there, or bytes measured on
  the host), reloaded when only what it re-reads on a signal changed;
- ``settle(platform)``: once every service is declared, wait until new ones run;
- ``status_script(names)`` and ``parse_status(output)``: for the status checks, whether
  each service runs, read-only;
- ``SUPERVISES``: whether it restarts what ends. ``repeat`` makes a job the host repeats
  between deploys (backups, renewals, health runs) a supervised loop where it does, and a
  line in root's crontab where it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from qmailhost import registry
from qmailhost.platform import Platform


@dataclass(frozen=True)
class Rcd:
    """The service on rc.d: its script's NAME and the VARIABLES its rc.conf.d file sets."""

    name: str
    variables: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Service:
    name: str  # its daemontools directory, and its name in the status checks
    description: str  # one line: what it is (the rc.conf.d file's header)
    run: str  # daemontools: the whole run script
    rcd: Rcd  # rc.d: the script and its variables
    reads_at_start: tuple[str, ...] = ()  # besides its definition: a change restarts it
    rewritten: bool = False  # this run rewrites a file it reads at start (it differs on the host)
    measured: tuple[str, str | None] | None = None  # (command, digest now) of files made on the host
    reload_on: tuple[str, ...] = ()  # a change here reloads it (qmail-send: HUP) instead
    reload_rewritten: bool = False  # this run rewrites a file it re-reads on reload
    reload_measured: tuple[str, str | None] | None = None  # as measured, for what it re-reads on reload
    replaces: tuple[str, str] | None = None  # (name, why): a service that must not run beside it


@dataclass(frozen=True)
class Repeat:
    """A job the host repeats between deploys. COMMAND decides itself whether anything is
    due, so a restart or an early round does not redo the work."""

    component: str
    service: str  # the supervised loop's name
    description: str  # the service's, e.g. "backs up with restic when due"
    what: str  # the run script's comment, e.g. "back up when due"
    command: str
    every: int  # seconds between the loop's rounds
    cron_name: str  # pyinfra's name for the crontab line
    cron_minute: str
    cron_hour: str = "*"


def repeat(platform: Platform, job: Repeat, on: bool, operation: str, off_because: str) -> None:
    """JOB running (ON), or taken away: a supervised loop (loop_run) where the service backend
    supervises, else root's crontab line (OPERATION: its operation's name), with its output
    thrown away: cron would mail it every round, and each job's outcome is in its status file
    a check reads. OFF_BECAUSE: why a supervised loop is retired."""
    if not backend(platform).SUPERVISES:
        from qmailhost import ops

        ops.cron(name=operation, command=f"{job.command} >/dev/null 2>&1", cron_name=job.cron_name,
                 minute=job.cron_minute, hour=job.cron_hour, present=on)
    elif on:
        declare(platform, Service(name=job.service, description=job.description,
                                  run=loop_run(job.component, job.what, job.command, job.every),
                                  rcd=Rcd(job.service.replace("-", ""))))
    else:
        backend(platform).retire(platform, job.service, off_because)


def supervises(platform: Platform) -> bool:
    """Does the platform's service backend restart what ends (else jobs repeat from cron)?"""
    return backend(platform).SUPERVISES


def loop_run(component: str, what: str, command: str, interval: int) -> str:
    """The run script of a job that repeats where no timer runs (supervised): COMMAND, then a
    sleep of INTERVAL seconds, again. One shell all along, so the service's pid stays and a
    look at the services sees a steady one (a script that exec'd sleep and ended was started
    anew by supervise each round, a new pid every time)."""
    return (f"#!/bin/sh\n# qmailhost ({component}/): {what} where no timer runs (supervised), then sleep, "
            f"again.\n# Written by the deploy.\nexec 2>&1\nwhile :; do\n    {command}\n    sleep {interval}\ndone\n")


def backend(platform: Platform) -> ModuleType:
    """The platform's service backend: the module of qmailhost/backends/ whose
    SERVICE_BACKEND is the platform's service_backend (found by the registry)."""
    return registry.service_backend(platform.service_backend)


def declare(platform: Platform, service: Service) -> None:
    backend(platform).declare(platform, service)


def supervisor(platform: Platform) -> None:
    """What must run before any service (svscan; or the base system's MTA stopped)."""
    backend(platform).supervisor(platform)


def settle(platform: Platform) -> None:
    """Once every service is declared: wait until the new ones run."""
    backend(platform).settle(platform)
