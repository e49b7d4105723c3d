"""Platform data: every path, user and package that differs between systems, decided once.

``detect()`` reads the OS facts and returns one ``Platform``; task code uses its fields
and never asks which OS it is on. Debian 13 and 12 build qmail, mess822, checkpassword
and spamdyke from pinned sources and run services under daemontools.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError
from pyinfra.facts.server import LinuxDistribution, Os


@dataclass(frozen=True)
class Platform:
    name: str
    release: str
    qmail_home: str
    prefix: str  # where qmailhost's own builds install
    service_dir: str  # what svscan scans
    supervise_dir: str  # where the service directories live
    log_dir: str
    tcprules_dir: str
    config_dir: str  # qmailhost's own config files (stunnel, spamdyke, TLS)
    stunnel: str
    nologin: str
    base_packages: tuple[str, ...]
    submission_modes: tuple[str, ...]

    @property
    def control_dir(self) -> str:
        return f"{self.qmail_home}/control"

    @property
    def checkpassword(self) -> str:
        return f"{self.prefix}/bin/checkpassword"

    @property
    def spamdyke(self) -> str:
        return f"{self.prefix}/bin/spamdyke"

    def ofmipd(self, with_auth: bool) -> str:
        return f"{self.prefix}/mess822/bin/ofmipd" + ("-auth" if with_auth else "")

    @property
    def tls_dir(self) -> str:
        return f"{self.config_dir}/tls"


DEBIAN_PACKAGES = (
    "build-essential", "groff-base", "patch", "libssl-dev", "openssl", "ucspi-tcp",
    "daemontools", "daemontools-run", "stunnel4", "ca-certificates", "procps",
)


def debian(release: str) -> Platform:
    return Platform(
        name="debian", release=release, qmail_home="/var/qmail", prefix="/usr/local",
        service_dir="/etc/service", supervise_dir="/var/qmail/supervise", log_dir="/var/log/qmail",
        tcprules_dir="/etc/tcp", config_dir="/etc/qmailhost", stunnel="/usr/bin/stunnel4",
        nologin="/usr/sbin/nologin", base_packages=DEBIAN_PACKAGES,
        submission_modes=("ofmipd", "spamdyke"),
    )


SUPPORTED = "Debian 12 or 13"


def detect() -> Platform:
    os_name = host.get_fact(Os)
    if os_name == "Linux":
        distro = host.get_fact(LinuxDistribution) or {}
        if distro.get("name") == "Debian" and str(distro.get("major")) in ("12", "13"):
            return debian(str(distro["major"]))
        raise PyinfraError(f"host {host.name}: {distro.get('name')} {distro.get('major')} is not supported; "
                           f"qmailhost runs on {SUPPORTED}")
    raise PyinfraError(f"host {host.name}: {os_name} is not supported; qmailhost runs on {SUPPORTED}")
