"""spamdyke: the filter in front of qmail-smtpd on port 25 (smtpd/), and in submission
mode "spamdyke" the SMTP AUTH front of stock ofmipd (submission/). Built from its pinned
release without TLS (build.sh): stunnel ends TLS on the submission port. Its config
files are read by every new connection, so changing them restarts nothing.
"""

from qmailhost.core import builds, ops
from qmailhost.core.component import Component, Setting
from qmailhost.core.platform import Platform
from qmailhost.core.settings import Settings, SettingsError, mapping
from qmailhost.core.templates import render

# spamdyke's filters on port 25 and their defaults. dns_blacklists needs working DNS on the host.
FILTERS = {
    "reject_empty_rdns": True,
    "reject_unresolvable_rdns": True,
    "reject_ip_in_cc_rdns": True,
    "dns_blacklists": ["zen.spamhaus.org"],
    "greeting_delay_secs": 5,
    "max_recipients": 50,
}


def program(platform: Platform) -> str:
    return f"{platform.prefix}/bin/spamdyke"


def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "spamdyke" not in platform.builds_from_source:
        return  # a package provides it (backends/packages.py)
    builds.build("spamdyke", "Build and install spamdyke", "spamdyke/build.sh",
                 args=[distfiles["spamdyke"], program(platform)], inputs=[checksums["spamdyke"]])


def smtp_config(platform: Platform, settings: Settings) -> str:
    filters = settings.spamdyke_filters
    dns = bool(filters["dns_blacklists"] or filters["reject_unresolvable_rdns"] or filters["reject_ip_in_cc_rdns"])
    path = f"{platform.config_dir}/spamdyke-smtp.conf"
    ops.whole_file(name="Write spamdyke's port 25 config", dest=path,
                   content=render("spamdyke/smtp.conf", control_dir=platform.control_dir, filters=filters, dns=dns))
    return path


_ZONE = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"


def _filters(value, _values=None) -> dict:
    """FILTERS with the inventory's values laid over them, each of its own kind."""
    import re

    filters = dict(FILTERS)
    filters.update(mapping("spamdyke_filters", value))
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise SettingsError("spamdyke_filters", f"unknown filter {unknown[0]!r}", f"use only {', '.join(FILTERS)}")
    for name, default in FILTERS.items():
        given = filters[name]
        if isinstance(default, bool) and not isinstance(given, bool):
            raise SettingsError(f"spamdyke_filters.{name}", f"{given!r} is not true or false",
                                "set it to true or false")
        if isinstance(default, int) and not isinstance(default, bool) and (
                isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= 10_000):
            raise SettingsError(f"spamdyke_filters.{name}", f"{given!r} is not a whole number from 0 to 10000",
                                "set it to a number in that range")
        if isinstance(default, list):
            if not isinstance(given, list | tuple) or not all(isinstance(z, str) and re.match(_ZONE, z) for z in given):
                raise SettingsError(f"spamdyke_filters.{name}", f"{given!r} is not a list of DNS zone names",
                                    "write it as a list, e.g. [\"zen.spamhaus.org\"], or [] for none")
            filters[name] = list(given)
    return filters


COMPONENT = Component(
    name="spamdyke",
    settings=(Setting("spamdyke_filters", FILTERS, _filters,
                      "spamdyke on port 25; default: rDNS checks, `zen.spamhaus.org`, 5 s greeting delay, "
                      "50 recipients"),),
)
