"""Packages: what the platform's package system provides, through its backend.

Debian (apt): ucspi-tcp (tcpserver, tcprules), daemontools (+ daemontools-run: svscan
over /etc/service), stunnel4, openssl, and build-essential, groff-base and libssl-dev
for the source builds. NetBSD (pkgin, backends/pkgsrc.py): qmail-run (qmail and its rc.d
scripts), stunnel, spamdyke, checkpassword, ucspi-tcp, and mess822 built from pkgsrc
with SMTP AUTH. A submission mode may add packages (TMDA). No daemon is started here.
On Debian, a run cut off during an install leaves dpkg half done: the next run waits
for any apt or dpkg still running, then finishes dpkg's work before installing.
"""

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.operations import apt

from qmailhost.backends import pkgsrc
from qmailhost.core.platform import Platform

_BUSY_OR_INTERRUPTED = r"""
for comm in /proc/[0-9]*/comm; do cat "$comm" 2>/dev/null; done | grep -qx -e apt-get -e dpkg -e apt && echo busy
[ -n "$(ls -A /var/lib/dpkg/updates 2>/dev/null)" ] && echo interrupted
true
"""


class DpkgState(FactBase):
    """{"busy", "interrupted"}: whether apt or dpkg runs now, or dpkg was cut off."""

    def command(self):
        return _BUSY_OR_INTERRUPTED

    def process(self, output):
        return set(output)


@operation()
def finish_interrupted_dpkg():
    state = host.get_fact(DpkgState)
    if not state:
        host.noop("dpkg is idle and consistent")
        return
    yield ("while for c in /proc/[0-9]*/comm; do cat $c 2>/dev/null; done | grep -qx -e apt-get -e dpkg -e apt; "
           "do sleep 1; done")
    yield "DEBIAN_FRONTEND=noninteractive dpkg --configure -a"


def _apt(platform: Platform, extra: tuple[str, ...] = ()) -> None:
    finish_interrupted_dpkg(name="Finish an interrupted dpkg run")
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
