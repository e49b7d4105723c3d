"""mess822's ofmipd, built twice side by side from one release (build.sh): stock (for
submission mode "spamdyke") and with John Levine's SMTP AUTH patch (mode "ofmipd"), so
switching modes is a run script change and a restart, never a rebuild. Where pkgsrc
builds it instead (NetBSD: one ofmipd with the `sasl` option, backends/pkgsrc.py),
there is nothing to build here; that one ofmipd, without AUTH arguments, behaves as
the stock one behind spamdyke.
"""

from qmailhost.core import builds
from qmailhost.core.component import Component
from qmailhost.core.platform import Platform

# (stock ofmipd, ofmipd with SMTP AUTH) on each platform.
OFMIPD = {
    "debian": ("/usr/local/mess822/bin/ofmipd", "/usr/local/mess822/bin/ofmipd-auth"),
    "netbsd": ("/usr/pkg/bin/ofmipd", "/usr/pkg/bin/ofmipd"),
}


def ofmipd(platform: Platform, with_auth: bool) -> str:
    stock, auth = OFMIPD[platform.name]
    return auth if with_auth else stock


def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "mess822" not in platform.builds_from_source:
        return
    builds.build(
        "mess822", "Build and install ofmipd (stock and with SMTP AUTH)", "mess822/build.sh",
        args=[distfiles["mess822"], distfiles["mess822-auth-patch"], platform.prefix],
        inputs=[checksums["mess822"], checksums["mess822-auth-patch"]],
    )


COMPONENT = Component(name="mess822")  # builds only: nothing to check or back up of its own
