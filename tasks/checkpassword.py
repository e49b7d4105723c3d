"""checkpassword: checks a password against /etc/shadow (NetBSD: /etc/master.passwd),
then runs a program as the user.

It needs root for both, while ofmipd and spamdyke run unprivileged as ofmipd; so it
is setuid root and executable only by group ofmipd (mode 4750): least privilege that
works. Nothing else on the host can run it. Built from its release (Debian) or
installed by a package (NetBSD), whose owner and mode are then set the same way.
"""

from pyinfra.api import deploy

from qmailhost import builds, ops
from qmailhost.component import Component, Needs
from qmailhost.platform import Platform

SERVICE_GROUP = "ofmipd"


NEEDS = {"debian": Needs(builds=("checkpassword",)), "netbsd": Needs(packages=("checkpassword",))}


def program(platform: Platform) -> str:
    return f"{platform.prefix}/bin/checkpassword"


@deploy("checkpassword")
def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "checkpassword" not in NEEDS[platform.name].builds:
        ops.permissions(name="Make checkpassword setuid root for group ofmipd only", path=program(platform),
                        mode="4750", user="root", group=SERVICE_GROUP)
        return
    builds.build(
        "checkpassword", "Build and install checkpassword", "checkpassword/build.sh",
        args=[distfiles["checkpassword"], program(platform), SERVICE_GROUP],
        inputs=[checksums["checkpassword"]],
    )


# Builds only: nothing to check or back up of its own.
COMPONENT = Component(name="checkpassword", needs=lambda platform, _settings: NEEDS[platform.name])
