"""Packages: what the platform's package system provides, through its backend.

Debian (apt): ucspi-tcp (tcpserver, tcprules), daemontools (+ daemontools-run: svscan
over /etc/service), stunnel4, openssl, and build-essential, groff-base and libssl-dev
for the source builds. NetBSD (pkgin, tasks/pkgsrc.py): qmail-run (qmail and its rc.d
scripts), stunnel, spamdyke, checkpassword, ucspi-tcp, and mess822 built from pkgsrc
with SMTP AUTH. A submission mode may add packages (TMDA). No daemon is started here.
"""

from pyinfra.operations import apt

from tasks import pkgsrc
from tasks.platform import Platform


def _apt(platform: Platform, extra: tuple[str, ...] = ()) -> None:
    apt.packages(
        name="Install the base packages",
        packages=[*platform.base_packages, *extra],
        update=True,
        cache_time=24 * 3600,
        no_recommends=True,
    )


BACKENDS = {"apt": _apt, "pkgin": pkgsrc.install}


def install(platform: Platform, extra: tuple[str, ...] = ()) -> None:
    BACKENDS[platform.package_manager](platform, extra)
