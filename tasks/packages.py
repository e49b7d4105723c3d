"""Base packages: the toolchain the builds need and the daemons Debian provides.

ucspi-tcp (tcpserver, tcprules), daemontools (+ daemontools-run: svscan over
/etc/service), stunnel4, openssl, and build-essential, groff-base and libssl-dev for
the source builds. No daemon is started by installing them. A run cut off during an
install leaves dpkg half done: the next run waits for any apt or dpkg still running,
then finishes dpkg's work before installing anything.
"""

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.operations import apt

from tasks.platform import Platform

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


def install(platform: Platform) -> None:
    finish_interrupted_dpkg(name="Finish an interrupted dpkg run")
    apt.packages(
        name="Install the base packages",
        packages=list(platform.base_packages),
        update=True,
        cache_time=24 * 3600,
        no_recommends=True,
    )
