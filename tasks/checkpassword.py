"""checkpassword: checks a password against /etc/shadow, then runs a program as the user.

It needs root for both, while ofmipd and spamdyke run unprivileged as ofmipd; so it
is setuid root and executable only by group ofmipd (mode 4750): least privilege that
works. Nothing else on the host can run it.
"""

from tasks import builds
from tasks.platform import Platform

SERVICE_GROUP = "ofmipd"


def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    builds.build(
        "checkpassword", "Build and install checkpassword", "checkpassword/build.sh",
        args=[distfiles["checkpassword"], platform.checkpassword, SERVICE_GROUP],
        inputs=[checksums["checkpassword"]],
    )
