"""apt (Debian's package backend): the packages the components need, in one install.

No daemon is started here. A run cut off during an install leaves dpkg half done: the
next run waits for any apt or dpkg still running, then finishes dpkg's work first.
"""

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.operations import apt

from qmailhost.platform import Platform

PACKAGE_BACKEND = "apt"  # found by qmailhost/registry.py under this name

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


def install(platform: Platform, needs) -> None:
    """NEEDS.packages (component.Needs), after finishing an interrupted dpkg run."""
    finish_interrupted_dpkg(name="Finish an interrupted dpkg run")
    apt.packages(
        name="Install the base packages",
        packages=list(needs.packages),
        update=True,
        cache_time=24 * 3600,
        no_recommends=True,
    )

