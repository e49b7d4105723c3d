"""mess822's ofmipd, built twice side by side from one release (build.sh): stock (for
submission mode "spamdyke") and with John Levine's SMTP AUTH patch (mode "ofmipd"), so
switching modes is a run script change and a restart, never a rebuild. Where pkgsrc
builds it instead (NetBSD: one ofmipd with the `sasl` option, backends/pkgsrc.py),
there is nothing to build here; that one ofmipd, without AUTH arguments, behaves as
the stock one behind spamdyke.
"""

from pyinfra.api import deploy

from qmailhost import builds
from qmailhost.component import Component, Needs
from qmailhost.platform import Platform

# (stock ofmipd, ofmipd with SMTP AUTH) on each platform.
OFMIPD = {
    "debian": ("/usr/local/mess822/bin/ofmipd", "/usr/local/mess822/bin/ofmipd-auth"),
    "netbsd": ("/usr/pkg/bin/ofmipd", "/usr/pkg/bin/ofmipd"),
}


# ofmipd with SMTP AUTH: Debian builds mess822 and the AUTH patch from their pinned files;
# pkgsrc builds mess822 from /usr/pkgsrc with its "sasl" option (binary packages lack it).
NEEDS = {
    "debian": Needs(builds=("mess822",)),
    "netbsd": Needs(pkgsrc_builds=(("mail/mess822", "mess822", ("sasl",)),)),
}


def ofmipd(platform: Platform, with_auth: bool) -> str:
    stock, auth = OFMIPD[platform.name]
    return auth if with_auth else stock


@deploy("mess822")
def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "mess822" not in NEEDS[platform.name].builds:
        return
    builds.build(
        "mess822", "Build and install ofmipd (stock and with SMTP AUTH)", "mess822/build.sh",
        args=[distfiles["mess822"], distfiles["mess822-auth-patch"], platform.prefix],
        inputs=[checksums["mess822"], checksums["mess822-auth-patch"]],
    )


# Builds only: nothing to check or back up of its own.
COMPONENT = Component(name="mess822", needs=lambda platform, _settings: NEEDS[platform.name])
