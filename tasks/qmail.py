"""qmail (notqmail): users, build, control files, aliases and sendmail.

notqmail is built from its pinned release into /var/qmail (Debian) or comes from
pkgsrc's qmail package (NetBSD: the platform's builds_from_source decides). Its
control files are managed as whole files (diffable with --dry --diff); qmail-send
delivers to each user's ./Maildir/. Neighbours: qmail-smtpd (port 25, tasks/smtpd.py)
and ofmipd (tasks/submission.py) queue through qmail-queue; qmail-send picks the mail up.
"""

from __future__ import annotations

from tasks import builds, ops, services
from tasks.platform import Platform
from tasks.settings import Settings

# notqmail's INSTALL.ids: group nofiles for the unprivileged daemons, qmail for the queue.
GROUPS = ("nofiles", "qmail")
USERS = (  # (user, group, home)
    ("alias", "nofiles", "alias"),
    ("qmaild", "nofiles", ""),
    ("qmaill", "nofiles", ""),
    ("qmailp", "nofiles", ""),
    ("qmailq", "qmail", ""),
    ("qmailr", "qmail", ""),
    ("qmails", "qmail", ""),
)


def users(platform: Platform) -> None:
    for group in GROUPS:
        ops.group(name=f"Create group {group}", group=group, tools=platform.accounts)
    for user, group, home in USERS:
        ops.user(
            name=f"Create user {user}", user=user, group=group, system=True,
            home=f"{platform.qmail_home}/{home}".rstrip("/"), shell=platform.nologin, tools=platform.accounts,
        )


def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "notqmail" not in platform.builds_from_source:
        return  # a package provides it (tasks/packages.py)
    builds.build(
        "notqmail", "Build and install notqmail", "qmail/build.sh",
        args=[distfiles["notqmail"]], inputs=[checksums["notqmail"], platform.qmail_home],
    )


def control_files(settings: Settings, platform: Platform | None = None) -> dict[str, str | None]:
    """Every control file qmailhost manages: name -> content (None: must be absent)."""
    locals_ = [settings.hostname, "localhost", *settings.domains]
    limits = {name: str(getattr(settings, setting)) for name, setting in
              (platform.connection_limit_files if platform else ())}
    return {
        "me": settings.hostname,
        "defaultdomain": settings.primary_domain,
        "defaulthost": settings.primary_domain,
        "plusdomain": settings.primary_domain,
        "locals": "\n".join(dict.fromkeys(locals_)),
        "rcpthosts": "\n".join(dict.fromkeys([*locals_, *settings.virtualdomains])),
        "virtualdomains": "\n".join(f"{d}:{p}" for d, p in settings.virtualdomains.items()) or None,
        "smtproutes": "\n".join(f"{d}:{r}" for d, r in settings.smtproutes.items()) or None,
        "databytes": str(settings.databytes),
        "concurrencyremote": str(settings.concurrency_remote),
        "concurrencylocal": str(settings.concurrency_local),
        "defaultdelivery": "./Maildir/",
        **limits,  # qmail-run's rc.d scripts read tcpserver's connection limits here
    }


# What qmail-send reads only at start (a restart applies them) and what it re-reads on
# HUP; everything else is read by each new qmail-smtpd, ofmipd or qmail-remote process.
READ_AT_START = ("me", "defaultdomain", "defaulthost", "plusdomain", "concurrencyremote",
                 "concurrencylocal", "defaultdelivery")
READ_ON_HUP = ("locals", "virtualdomains")


def configure(platform: Platform, settings: Settings) -> dict[str, str]:
    """Write the control files; returns them for the services' restart fingerprints."""
    control = control_files(settings, platform)
    for name, content in control.items():
        path = f"{platform.control_dir}/{name}"
        if content is None:
            ops.absent_file(name=f"Remove control/{name}", path=path)
        else:
            ops.whole_file(name=f"Write control/{name}", dest=path, content=content + "\n")
    ops.whole_file(
        name="Write /var/qmail/rc", dest=f"{platform.qmail_home}/rc", mode="755",
        content="#!/bin/sh\n# qmail-send's start: deliver to ./Maildir/ (control/defaultdelivery)\n"
                f"exec env - PATH=\"{platform.qmail_home}/bin:$PATH\" "
                f"qmail-start \"$(cat {platform.control_dir}/defaultdelivery)\"\n",
    )
    return {name: content or "" for name, content in control.items()}


def aliases(platform: Platform, settings: Settings) -> None:
    for alias, account in sorted(settings.aliases.items()):
        ops.whole_file(
            name=f"Alias {alias} to {account}", dest=f"{platform.qmail_home}/alias/.qmail-{alias}",
            content=f"&{account}@{settings.primary_domain}\n",
        )


def sendmail(platform: Platform) -> None:
    """sendmail is qmail's: links (Debian), or mailwrapper's /etc/mailer.conf (NetBSD)."""
    for path in platform.sendmail_links:
        ops.link(name=f"Point {path} at qmail's", path=path, target=f"{platform.qmail_home}/bin/sendmail")
    if platform.mailer_conf is not None:
        ops.whole_file(name="Point mailwrapper at qmail (/etc/mailer.conf)", dest="/etc/mailer.conf",
                       content=platform.mailer_conf)


def service(platform: Platform, control: dict[str, str], notqmail_checksum: str) -> None:
    """qmail-send: restarted when what it reads at start changes, sent HUP (re-read
    locals and virtualdomains) when only those change."""
    services.backend(platform).qmail_send(
        platform, start_inputs=[notqmail_checksum, *(control[name] for name in READ_AT_START)],
        reload_inputs=[control[name] for name in READ_ON_HUP])
