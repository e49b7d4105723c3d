"""apt (Debian's package backend): the packages the components need, in one install.

No daemon is started here. A run cut off during an install leaves dpkg half done: the
next run waits while apt or dpkg holds its locks (at most 15 minutes), then finishes
dpkg's work first.
"""

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.operations import apt

from qmailhost.platform import Platform

PACKAGE_BACKEND = "apt"  # found by qmailhost/registry.py under this name

# apt and dpkg hold fcntl locks on these while they change packages or their lists; a
# simulation (apt-get -s, as the scheduled `updates` check runs it) takes none, so a process
# name is no sign of work in progress. /proc/locks names a lock by MAJ:MIN:INODE in hex.
_LOCKED = r"""
locked() {
  for f in /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock; do
    [ -e "$f" ] || continue
    d=$(stat -c %d "$f"); i=$(stat -c %i "$f")
    id=$(printf '%02x:%02x:%s' $(( (d >> 8) & 0xfff )) $(( (d & 0xff) | ((d >> 12) & 0xfff00) )) "$i")
    grep -q " $id " /proc/locks && return 0
  done
  return 1
}
"""
_BUSY_OR_INTERRUPTED = _LOCKED + r"""
locked && echo busy
[ -n "$(ls -A /var/lib/dpkg/updates 2>/dev/null)" ] && echo interrupted
true
"""
WAIT_SECONDS = 900  # unattended-upgrades' longest runs; past that the deploy stops, saying why


class DpkgState(FactBase):
    """{"busy", "interrupted"}: whether apt or dpkg holds its locks now, or dpkg was cut off."""

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
    yield (_LOCKED + f"waited=0; while locked; do [ $waited -lt {WAIT_SECONDS} ] || "
           f"{{ echo 'apt or dpkg has held its lock for {WAIT_SECONDS} s (unattended-upgrades?): "
           "deploy again once it is done' >&2; exit 1; }; sleep 1; waited=$((waited + 1)); done")
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

