"""spamdyke: the filter in front of qmail-smtpd on port 25 (and, in submission mode
"spamdyke", the SMTP AUTH front of stock ofmipd). Built from its pinned release
without TLS: stunnel ends TLS on the submission port. Its config files are read by
every new connection, so changing them restarts nothing.
"""

from tasks import builds, ops
from tasks.platform import Platform
from tasks.settings import Settings
from tasks.templates import render


def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "spamdyke" not in platform.builds_from_source:
        return  # a package provides it (tasks/packages.py)
    builds.build("spamdyke", "Build and install spamdyke", "spamdyke/build.sh",
                 args=[distfiles["spamdyke"], platform.spamdyke], inputs=[checksums["spamdyke"]])


def smtp_config(platform: Platform, settings: Settings) -> str:
    filters = settings.spamdyke_filters
    dns = bool(filters["dns_blacklists"] or filters["reject_unresolvable_rdns"] or filters["reject_ip_in_cc_rdns"])
    path = f"{platform.config_dir}/spamdyke-smtp.conf"
    ops.whole_file(name="Write spamdyke's port 25 config", dest=path,
                   content=render("spamdyke/smtp.conf", control_dir=platform.control_dir, filters=filters, dns=dns))
    return path
