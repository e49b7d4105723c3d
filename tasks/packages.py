"""Base packages: the toolchain the builds need and the daemons Debian provides.

ucspi-tcp (tcpserver, tcprules), daemontools (+ daemontools-run: svscan over
/etc/service), stunnel4, openssl, and build-essential, groff-base and libssl-dev for
the source builds. No daemon is started by installing them.
"""

from pyinfra.operations import apt

from tasks.platform import Platform


def install(platform: Platform) -> None:
    apt.packages(
        name="Install the base packages",
        packages=list(platform.base_packages),
        update=True,
        cache_time=24 * 3600,
        no_recommends=True,
    )
