"""mess822's ofmipd, built twice side by side: stock (for submission mode "spamdyke")
and with John Levine's SMTP AUTH patch (mode "ofmipd"), so switching modes is a run
script change and a restart, never a rebuild. Where pkgsrc builds it instead (NetBSD:
one ofmipd with the `sasl` option, tasks/pkgsrc.py), there is nothing to do here.
"""

from tasks import builds
from tasks.platform import Platform


def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "mess822" not in platform.builds_from_source:
        return
    builds.build(
        "mess822", "Build and install ofmipd (stock and with SMTP AUTH)", "mess822/build.sh",
        args=[distfiles["mess822"], distfiles["mess822-auth-patch"], platform.prefix],
        inputs=[checksums["mess822"], checksums["mess822-auth-patch"]],
    )
