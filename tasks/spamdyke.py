"""spamdyke: the filter in front of qmail-smtpd on port 25 (tasks/smtpd.py), and its STARTTLS, and
in submission mode "spamdyke" the SMTP AUTH front of stock ofmipd (tasks/submission.py, where
stunnel ends TLS). Built from its pinned release with TLS (build.sh refuses a build
without it). Its config files, the TLS pair and the policy's OpenSSL config are read by
every new connection, so changing them (or a renewed pair) restarts nothing.
"""

import ipaddress

from pyinfra.api import deploy

from qmailhost import builds, ops
from qmailhost.checks import ERROR, OK, SKIPPED
from qmailhost.component import Component, Needs, Setting
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, SettingsError, mapping
from tasks import resolver, tls

# spamdyke's filters on port 25 and their defaults. dns_blacklists needs working DNS on the host.
FILTERS = {
    "reject_empty_rdns": True,
    "reject_unresolvable_rdns": True,
    "reject_ip_in_cc_rdns": True,
    "dns_blacklists": ["zen.spamhaus.org"],
    "greeting_delay_secs": 5,
    "max_recipients": 50,
}


# Debian builds spamdyke from its pinned release (build.sh proves +TLS). pkgsrc builds it
# with "tls" (mail/spamdyke/options.mk supports it but suggests nothing). Its configure
# defines HAVE_LIBSSL (all of its TLS code) only when it finds SSL_library_init, a check
# pkgsrc's patch-configure.ac removes for OpenSSL 1.1: the version line says "+TLS" only
# when TLS was compiled in, whatever PKG_OPTIONS recorded.
NEEDS = {
    "debian": Needs(builds=("spamdyke",)),
    "netbsd": Needs(
        pkgsrc_builds=(("mail/spamdyke", "spamdyke", ("tls",)),),
        pkgsrc_proofs=(("spamdyke", "/usr/pkg/bin/spamdyke -v 2>&1 </dev/null | head -1", "+TLS",
                        "spamdyke has no TLS compiled in (port 25 could not offer STARTTLS)"),)),
}


def program(platform: Platform) -> str:
    return f"{platform.prefix}/bin/spamdyke"


def recipient_checker(platform: Platform) -> str | None:
    """spamdyke-qrv, built from spamdyke's tarball: answers whether qmail would deliver to an
    address (locals, virtualdomains, users/assign, the passwd file, ~/.qmail-ext and -default
    files, ~alias), so unknown recipients are refused at RCPT, never bounced later to a forged
    sender. Setuid root (it looks into homes), executable only by port 25's group. None where
    the platform builds no spamdyke of its own (pkgsrc)."""
    return f"{platform.prefix}/bin/spamdyke-qrv" if "spamdyke" in NEEDS[platform.name].builds else None


@deploy("spamdyke")
def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "spamdyke" not in NEEDS[platform.name].builds:
        return  # a package provides it (backends/packages.py)
    builds.build("spamdyke", "Build and install spamdyke and spamdyke-qrv", "spamdyke/build.sh",
                 args=[distfiles["spamdyke"], program(platform), recipient_checker(platform), tls.KEY_GROUP],
                 inputs=[checksums["spamdyke"]])


def smtp_config(platform: Platform, settings: Settings) -> str:
    filters = settings.spamdyke_filters
    dns = bool(filters["dns_blacklists"] or filters["reject_unresolvable_rdns"] or filters["reject_ip_in_cc_rdns"])
    path = f"{platform.config_dir}/spamdyke-smtp.conf"
    cert, key = tls.paths(platform)
    ops.whole_file(name="Write spamdyke's port 25 config", dest=path,
                   content=render("spamdyke/smtp.conf.j2", control_dir=platform.control_dir, filters=filters, dns=dns,
                                  resolver=resolver.ADDRESS, cert=cert, key=key, policy=tls.policy(settings),
                                  recipient_checker=recipient_checker(platform),
                                  session_seconds=settings.session_seconds))
    return path


# --- status check ---------------------------------------------------------------------------

# What a DNS blocklist answers for its test points (RFC 5782): 127.0.0.2 is listed, 127.0.0.1
# is not. Spamhaus answers 127.255.255.252-255 instead when it refuses the resolver asking
# (a public or shared one, or one over its free limit): then spamdyke would refuse everyone.
LISTED, NOT_LISTED = "2.0.0.127", "1.0.0.127"
REFUSAL = ipaddress.ip_network("127.255.255.0/24")
LISTING = ipaddress.ip_network("127.0.0.0/24")


def check_blocklists_answer(target):
    """Each DNS blocklist spamdyke asks answers its test points through the host's resolver:
    its listed point listed in 127.0.0.0/24, its unlisted point not listed, and no refusal."""
    zones = target.settings.spamdyke_filters["dns_blacklists"]
    if not zones:
        return SKIPPED, "no dns_blacklists in spamdyke_filters"
    problems, fine = [], []
    for zone in zones:
        listed = _addresses(target.run(resolver.query_command(target.platform, f"{LISTED}.{zone}")))
        unlisted = _addresses(target.run(resolver.query_command(target.platform, f"{NOT_LISTED}.{zone}")))
        refused = [a for a in listed + unlisted if a in REFUSAL]
        if refused:
            problems.append(f"{zone} refuses the host's resolver (it answered {refused[0]} for its test points): "
                            "spamdyke would refuse every sender; let unbound recurse itself (no dns_forwarders "
                            "through a shared resolver) or drop the list")
        elif unlisted:
            problems.append(f"{zone} lists {NOT_LISTED}, which no list should ({unlisted[0]}): every sender "
                            "would be refused")
        elif not listed or not all(a in LISTING for a in listed):
            answer = ", ".join(map(str, listed)) or "no answer"
            problems.append(f"{zone} does not list its test point {LISTED} ({answer}): the list is not working "
                            "from this host, and filters nothing")
        else:
            fine.append(zone)
    if problems:
        return ERROR, "; ".join(problems)
    return OK, f"{', '.join(fine)} answer their test points through the host's resolver"


def _addresses(output: str) -> list[ipaddress.IPv4Address]:
    found = []
    for line in output.split():
        try:
            found.append(ipaddress.IPv4Address(line.strip()))
        except ValueError:
            continue
    return found


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
            if not isinstance(given, list | tuple) or \
                    not all(isinstance(z, str) and re.fullmatch(_ZONE, z) for z in given):
                raise SettingsError(f"spamdyke_filters.{name}", f"{given!r} is not a list of DNS zone names",
                                    "write it as a list, e.g. [\"zen.spamhaus.org\"], or [] for none")
            filters[name] = list(given)
    return filters


COMPONENT = Component(
    name="spamdyke",
    needs=lambda platform, _settings: NEEDS[platform.name],
    settings=(Setting("spamdyke_filters", FILTERS, _filters,
                      "spamdyke on port 25; default: rDNS checks, `zen.spamhaus.org`, 5 s greeting delay, "
                      "50 recipients"),),
    checks=(check_blocklists_answer,),
)
