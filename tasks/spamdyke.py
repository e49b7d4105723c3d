"""spamdyke: the filter in front of qmail-smtpd on port 25 (tasks/smtpd.py), and its STARTTLS, and
in submission mode "spamdyke" the SMTP AUTH front of stock ofmipd (tasks/submission.py, where
stunnel ends TLS). Built from its pinned release with TLS (build.sh refuses a build
without it). Its config files, the TLS pair and the policy's OpenSSL config are read by
every new connection, so changing them (or a renewed pair) restarts nothing.
"""

import ipaddress
import re

from pyinfra.api import deploy

from qmailhost import builds, ops
from qmailhost.checks import ERROR, OK, SKIPPED, WARNING
from qmailhost.component import Component, Needs, Setting
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, SettingsError, mapping
from tasks import dns, resolver, tls

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
    # pkgsrc's spamdyke keeps the fixed 0.5 s waits in its TLS code (PATCHES: Debian's build only).
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


# Our own patches to the release, applied by build.sh: its TLS handshake, reads, writes and
# shutdown wait on the socket, not a fixed 0.5 s per try (issue 27).
PATCHES = ("spamdyke/tls-wait.patch",)


@deploy("spamdyke")
def install(platform: Platform, distfiles: dict[str, str], checksums: dict[str, str]) -> None:
    if "spamdyke" not in NEEDS[platform.name].builds:
        return  # a package provides it (backends/packages.py)
    builds.build("spamdyke", "Build and install spamdyke and spamdyke-qrv", "spamdyke/build.sh",
                 args=[distfiles["spamdyke"], program(platform), recipient_checker(platform), tls.KEY_GROUP],
                 inputs=[checksums["spamdyke"]], files=PATCHES)


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


# --- status checks --------------------------------------------------------------------------

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


# --- the host's own listings

# Domain blocklists list in 127.0.1.0/24 (Spamhaus DBL) or, as others do, in 127.0.0.0/24; they
# refuse a resolver in 127.255.255.0/24 as the address lists do.
DOMAIN_LISTING = (ipaddress.ip_network("127.0.1.0/24"), LISTING)


def check_listed(target):
    """Neither the host's public IPv4 addresses are on the DNS blocklists spamdyke asks, nor its
    domains on domain_blocklists (receivers asking the same lists would refuse or junk its mail):
    asked through the host's own resolver, as spamdyke asks. A list refusing that resolver is a
    warning (its listings are unknown), never a listing."""
    settings, questions, skipped = target.settings, [], []
    zones = settings.spamdyke_filters["dns_blacklists"]
    addresses, no_address = _public_ipv4(target) if zones else ([], "no dns_blacklists in spamdyke_filters")
    questions += [(address, zone, f"{_reversed(address)}.{zone}", (LISTING,))
                  for address in addresses for zone in zones]
    if not addresses:
        skipped.append(no_address)
    domains = [domain for domain in own_domains(settings) if not _reserved(domain)]
    questions += [(domain, zone, f"{domain}.{zone}", DOMAIN_LISTING)
                  for domain in domains for zone in settings.domain_blocklists]
    if not settings.domain_blocklists:
        skipped.append("no domain_blocklists")
    elif not domains:
        skipped.append(f"no public domain ({', '.join(own_domains(settings))}: reserved, never public)")
    listed, odd, refused, clean = [], [], {}, {}
    for what, zone, name, listings in questions:
        if zone in refused:
            continue
        answers = _addresses(target.run(resolver.query_command(target.platform, name)))
        listing = next((a for a in answers if any(a in network for network in listings)), None)
        refusal = next((a for a in answers if a in REFUSAL), None)
        if listing is not None:
            listed.append(f"{what} on {zone} ({listing})")
        elif refusal is not None:
            refused[zone] = f"{zone} refuses this resolver ({refusal}): its listings are unknown"
        elif answers:
            odd.append(f"{zone} answered {answers[0]} for {what}, not a listing code")
        else:
            clean.setdefault(zone, []).append(what)
    warnings = odd + list(refused.values())
    if listed:
        return ERROR, "; ".join([f"listed: {', '.join(listed)}", *warnings])
    if warnings:
        return WARNING, "; ".join(warnings)
    if not clean:
        return SKIPPED, "; ".join(skipped)
    return OK, "; ".join([*(f"{', '.join(whats)} not on {zone}" for zone, whats in clean.items()), *skipped])


def own_domains(settings) -> list[str]:
    """The domains the host's mail comes from: domains, and the hostname's own (minus its first
    label) when it is not one of them."""
    labels = settings.hostname.split(".")
    return list(dict.fromkeys([*settings.domains, ".".join(labels[1:]) if len(labels) > 2 else settings.hostname]))


def _public_ipv4(target) -> tuple[list[str], str]:
    """The IPv4 addresses the Internet sees the host at: public_addresses, else the host's own as
    tasks/dns.py lists them (read on the host now), without the private ones; with none, why."""
    given = target.settings.public_addresses
    listing = f"{{ {dns.ADDRESS_LISTING[target.platform.name]}; }} 2>/dev/null"
    found = [ipaddress.ip_address(a) for a in given or interface_addresses(target.run(listing))]
    ipv4 = [a for a in found if a.version == 4 and not (a.is_loopback or a.is_link_local)]
    public = [str(a) for a in ipv4 if a.is_global]
    where = "public_addresses" if given else "the host's addresses"
    if public:
        return public, ""
    if not ipv4:
        return [], f"no public address: {where} hold no IPv4 address"
    return [], (f"no public address: {where} ({', '.join(map(str, ipv4))}) are private (behind NAT?)"
                + ("" if given else "; public_addresses names the one the Internet sees"))


def interface_addresses(output: str) -> list[str]:
    """Each address after an "inet" or "inet6" word (ifconfig's lines, or tasks/dns.py's listing), its
    prefix length and zone removed."""
    words = output.split()
    found = []
    for word, after in zip(words, words[1:], strict=False):
        if word in ("inet", "inet6"):
            address = after.split("/")[0].split("%")[0]
            try:
                found.append(str(ipaddress.ip_address(address)))
            except ValueError:
                continue
    return list(dict.fromkeys(found))


def _reversed(address: str) -> str:
    return ".".join(reversed(address.split(".")))


def _reserved(name: str) -> bool:
    """A name under a reserved domain (.test, .example, ...): no blocklist can list it."""
    return any(name == suffix or name.endswith("." + suffix) for suffix in dns.RESERVED_DOMAINS)


# --- settings ------------------------------------------------------------------------------

_ZONE = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$"


def _zones(setting: str, example: str):
    """A parser: a list of DNS zone names (blocklists)."""

    def parse(value, _values=None) -> list[str]:
        if not isinstance(value, list | tuple) or \
                not all(isinstance(z, str) and re.fullmatch(_ZONE, z) for z in value):
            raise SettingsError(setting, f"{value!r} is not a list of DNS zone names",
                                f"write it as a list, e.g. [\"{example}\"], or [] for none")
        return list(value)

    return parse


def _filters(value, _values=None) -> dict:
    """FILTERS with the inventory's values laid over them, each of its own kind."""
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
            filters[name] = _zones(f"spamdyke_filters.{name}", "zen.spamhaus.org")(given)
    return filters


COMPONENT = Component(
    name="spamdyke",
    needs=lambda platform, _settings: NEEDS[platform.name],
    settings=(Setting("spamdyke_filters", FILTERS, _filters,
                      "spamdyke on port 25; default: rDNS checks, `zen.spamhaus.org`, 5 s greeting delay, "
                      "50 recipients"),
              Setting("domain_blocklists", ["dbl.spamhaus.org"], _zones("domain_blocklists", "dbl.spamhaus.org"),
                      "domain blocklists the `listed` check asks about the host's domains (its addresses: "
                      "on `dns_blacklists`); `[]`: none"),),
    checks=(check_blocklists_answer, check_listed),
)
