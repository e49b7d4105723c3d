"""DNS: the records the mail world looks up about this host, printed and checked from outside.

The host never edits DNS itself. Each component declares the records it needs
(``Component.dns_records``): this one the mail domain's own (MX, the host's A/AAAA, SPF,
DMARC, TLS-RPT), tasks/dkim.py a TXT record per key, tasks/stunnel.py and tasks/imap.py their SRV records
(RFC 6186, 8314). ``records.py`` prints them all in zone-file form (``zone_text``), with
long TXT values split into strings of at most 255 characters; the status checks compare
what DNS publishes with that same list, one check per kind, naming each record missing or
different. The PTR check asks the other way: each address points back at the name.

Names no public DNS serves (.test, .example, ...) are skipped, saying so, unless
``dns_server`` names a resolver to ask (a private one may serve them), as is a laptop
with no resolver to ask.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from qmailhost.checks import ERROR, OK, SKIPPED, WARNING
from qmailhost.component import Component, DnsRecord, Probe, Setting
from qmailhost.registry import components
from qmailhost.settings import Settings, SettingsError

# Names no public DNS serves (RFC 2606, 6761, 6762, 8375): nothing to look up.
RESERVED_DOMAINS = ("test", "example", "invalid", "localhost", "local", "home.arpa",
                    "example.com", "example.net", "example.org")
TTL = 3600
TXT_STRING = 255  # the longest character-string in a TXT record (RFC 1035 3.3)
DMARC_POLICIES = ("none", "quarantine", "reject")
# How each platform lists its interface addresses (one "inet[6] ADDRESS" per address), with
# what every install has (Debian's hostname package is required; iproute2 may be absent).
ADDRESS_LISTING = {"debian": 'for a in $(hostname -I); do echo "inet $a"; done', "netbsd": "ifconfig -a"}


# --- the records ------------------------------------------------------------------------------


def mail_domain_records(settings: Settings, state: dict) -> tuple[DnsRecord, ...]:
    """MX, the host's addresses, SPF, DMARC and TLS-RPT for each domain."""
    hostname, records = settings.hostname, []
    smarthost = settings.smtproutes.get("")
    for address in public_addresses(settings, state):
        kind = "AAAA" if ":" in address else "A"
        private = ipaddress.ip_address(address).is_private
        records.append(DnsRecord(hostname, kind, address, "address", comment=(
            f"{address} is a private address: set public_addresses to the one the Internet reaches"
            if private else "")))
    for domain in settings.domains:
        records.append(DnsRecord(domain, "MX", f"10 {hostname}.", "mx"))
        records.append(DnsRecord(domain, "TXT", f"v=spf1 mx {'~all' if smarthost else '-all'}", "spf",
                                 severity=WARNING, comment=(
                                     f"SPF: mail leaves through {smarthost}: add its SPF terms (include:...)"
                                     if smarthost else "SPF: only the MX sends mail for this domain")))
        dmarc = f"v=DMARC1; p={settings.dmarc_policy}" + (
            f"; rua=mailto:{settings.dmarc_reports}" if settings.dmarc_reports else "")
        records.append(DnsRecord(f"_dmarc.{domain}", "TXT", dmarc, "dmarc", severity=WARNING,
                                 comment=f"DMARC: policy {settings.dmarc_policy} (dmarc_policy)"))
        reports = settings.tls_reports or f"postmaster@{domain}"
        records.append(DnsRecord(f"_smtp._tls.{domain}", "TXT", f"v=TLSRPTv1; rua=mailto:{reports}", "tlsrpt",
                                 severity=WARNING, comment="TLS-RPT (RFC 8460): where peers report TLS failures"))
    if hostname not in settings.domains:  # bounces and the EHLO name: SPF of the host's own name
        records.append(DnsRecord(hostname, "TXT", "v=spf1 a -all", "spf", severity=WARNING,
                                 comment="SPF of the host's name (its bounces, its EHLO)"))
    return tuple(records)


def service_records(settings: Settings, services: tuple[tuple[str, int | None], ...], what: str
                    ) -> tuple[DnsRecord, ...]:
    """SRV records (RFC 6186, 8314) telling mail clients where SERVICES are: (service, port or None: off)."""
    return tuple(DnsRecord(f"_{service}._tcp.{domain}", "SRV", f"0 1 {port} {settings.hostname}.", "srv",
                           severity=WARNING, comment=f"{what}: {service} on {port} (mail clients find it here)")
                 for domain in settings.domains for service, port in services if port)


def records(settings: Settings, state: dict) -> tuple[DnsRecord, ...]:
    """Every record the host needs: the mail domains' own first, then each component's."""
    ordered = sorted(components(), key=lambda component: component.name != "dns")
    return tuple(record for component in ordered for record in component.dns_records(settings, state))


def public_addresses(settings: Settings, state: dict) -> tuple[str, ...]:
    return settings.public_addresses or tuple(state.get("addresses") or ())


def _zone_of(name: str, settings: Settings) -> str:
    matches = [d for d in settings.domains if name == d or name.endswith("." + d)]
    return max(matches, key=len) if matches else name


def txt_strings(value: str) -> list[str]:
    """VALUE as the character-strings of one TXT record: at most 255 bytes each."""
    data = value.encode()
    return [data[i: i + TXT_STRING].decode() for i in range(0, len(data), TXT_STRING)] or [""]


def _rdata(record: DnsRecord) -> str:
    if record.type != "TXT":
        return record.value
    strings = [f'"{s}"' for s in txt_strings(record.value.replace("\\", "\\\\").replace('"', '\\"'))]
    return strings[0] if len(strings) == 1 else "( " + " ".join(strings) + " )"


def zone_text(settings: Settings, found: tuple[DnsRecord, ...]) -> str:
    """FOUND in zone-file form, by zone (absolute names: each line can be pasted as it is)."""
    lines = [f"; qmailhost: the DNS records {settings.hostname} needs (records.py; the host is unchanged)"]
    zones: dict[str, list[DnsRecord]] = {}
    for record in found:
        zones.setdefault(_zone_of(record.name, settings), []).append(record)
    for zone, members in zones.items():
        lines += ["", f"; --- zone {zone}"]
        width = max(len(r.name) for r in members) + 1
        for record in members:
            if record.comment:
                lines.append(f"; {record.comment}")
            lines.append(f"{record.name + '.':{width}} {TTL} IN {record.type:4} {_rdata(record)}")
    return "\n".join(lines) + "\n"


# --- comparing them with DNS -------------------------------------------------------------------


def _tags(text: str) -> dict[str, str]:
    return {k.strip().lower(): re.sub(r"\s+", "", v) for k, _, v in
            (part.partition("=") for part in text.split(";")) if k.strip()}


def _family(text: str) -> str:
    return text.split(";")[0].split()[0].strip().lower() if text.strip() else ""


def _txt_matches(expected: str, published: str) -> bool:
    if _family(expected) == "v=spf1":
        return published.split() == expected.split()
    want, have = _tags(expected), _tags(published)
    if want.get("v") == "DKIM1":  # the key is what matters: k (rsa by default) and p
        return have.get("p") == want["p"] and have.get("k", "rsa") == want.get("k", "rsa")
    return all(have.get(tag) == value for tag, value in want.items())


def compare(record: DnsRecord, dns) -> str | None:
    """None when DNS publishes RECORD; else what is wrong, in a few words."""
    published = dns.lookup(record.name, record.type)
    if record.type == "MX":
        exchange = record.value.split()[1].rstrip(".")
        return None if exchange in published else f"{record.name} MX {', '.join(published) or 'missing'}"
    if record.type in ("A", "AAAA"):
        return None if record.value in published else f"{record.name} {record.type} {record.value} missing"
    if record.type == "SRV":
        want = record.value.split()[2:]
        have = [value.split()[2:] for value in published]
        if [want[0], want[1].rstrip(".")] in [[h[0], h[1].rstrip(".")] for h in have if len(h) == 2]:
            return None
        return f"{record.name} SRV {'; '.join(published) or 'missing'}"
    family = [text for text in published if _family(text) == _family(record.value)]
    if any(_txt_matches(record.value, text) for text in family):
        return None
    if family:
        return f"{record.name} TXT differs (publishes \"{_short(family[0])}\")"
    return f"{record.name} TXT missing"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record_check(kind: str, what: str) -> Callable:
    def check(target):
        if skip := _dns_skip(target):
            return skip
        wanted = [r for r in records(target.settings, target.host_state) if r.check == kind]
        if not wanted:
            return SKIPPED, f"no {what} records are needed"
        wrong = [(record, problem) for record in wanted if (problem := compare(record, target.dns))]
        if wrong:
            level = ERROR if any(r.severity == ERROR for r, _ in wrong) else WARNING
            return level, f"as records.py prints them: {'; '.join(problem for _, problem in wrong)}"
        return OK, f"{len(wanted)} {what} record{'s' if len(wanted) != 1 else ''} as printed"

    check.__name__ = f"check_dns_{kind}"
    check.__doc__ = f"DNS publishes the {what} records records.py prints."
    return check


check_dns_mx = _record_check("mx", "MX")
check_dns_address = _record_check("address", "A/AAAA")
check_dns_spf = _record_check("spf", "SPF")
check_dns_dkim = _record_check("dkim", "DKIM")
check_dns_dmarc = _record_check("dmarc", "DMARC")
check_dns_tlsrpt = _record_check("tlsrpt", "TLS-RPT")
check_dns_srv = _record_check("srv", "SRV")


def check_dns_ptr(target):
    """Each of the host's addresses (as records.py prints them) points back at its name
    (receivers check this)."""
    if skip := _dns_skip(target):
        return skip
    hostname = target.settings.hostname
    addresses = public_addresses(target.settings, target.host_state)
    if not addresses:
        return SKIPPED, f"{hostname} has no address (set public_addresses)"
    wrong = [f"{address} -> {', '.join(names) or 'no PTR'}" for address in addresses
             if hostname not in (names := target.dns.lookup(ipaddress.ip_address(address).reverse_pointer, "PTR"))]
    if wrong:
        # Behind a smarthost, other servers never see this host's PTR.
        status = WARNING if "" in target.settings.smtproutes else ERROR
        return status, f"not pointing back at {hostname}: {'; '.join(wrong)}"
    return OK, f"PTR of each address is {hostname}"


def _reserved(name: str) -> str | None:
    return next((suffix for suffix in RESERVED_DOMAINS if name == suffix or name.endswith("." + suffix)), None)


def _dns_skip(target) -> tuple[str, str] | None:
    """A skipped result when there is no DNS to ask about these names."""
    names = [target.settings.hostname, *target.settings.domains]
    if target.settings.dns_server is None and all(_reserved(name) for name in names):
        return SKIPPED, (f"no DNS for {target.settings.hostname}: .{_reserved(names[0])} is reserved, never "
                         "public (dns_server names a resolver that serves it)")
    if reason := target.dns.unreachable:
        return SKIPPED, f"no DNS: {reason}"
    return None


# --- settings, the host's addresses -----------------------------------------------------------


def _addresses_setting(value, _values=None) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        if not isinstance(value, list | tuple) or not value:
            raise ValueError
        return tuple(str(ipaddress.ip_address(v)) for v in value)
    except ValueError:
        raise SettingsError("public_addresses", f"{value!r} is not a list of IP addresses",
                            "write it as [\"192.0.2.25\", \"2001:db8::25\"], or leave it out (the host's "
                            "own)") from None


def _choice(setting: str, choices: tuple[str, ...]):
    def parse(value, _values=None) -> str:
        if value not in choices:
            raise SettingsError(setting, f"{value!r} is not a policy", f"set it to one of {', '.join(choices)}")
        return value

    return parse


def _address(setting: str):
    def parse(value, _values=None) -> str | None:
        if value is not None and (not isinstance(value, str) or not re.fullmatch(r"[^@\s;,!]+@[^@\s;,!]+\.[^@\s;,!]+",
                                                                                   value)):
            raise SettingsError(setting, f"{value!r} is not a mail address", "set it to an address such as "
                                "dmarc-reports@example.org, or leave it out")
        return value

    return parse


def _server(value, _values=None) -> tuple[str, int] | None:
    if value is None:
        return None
    match = re.fullmatch(r"(?P<address>[0-9a-fA-F.:]+)(@(?P<port>\d{1,5}))?", str(value))
    try:
        ipaddress.ip_address(match["address"]) if match else None
    except ValueError:
        match = None
    if not match or not 0 < int(match["port"] or 53) < 65536:
        raise SettingsError("dns_server", f"{value!r} is not an address (with an optional @port)",
                            "use \"192.0.2.53\" or \"192.0.2.53@5353\", or leave it out (the laptop's resolver)")
    return match["address"], int(match["port"] or 53)


def _addresses_probe(platform, settings) -> str:
    words = ('{ for (i = 1; i < NF; i++) if ($i == "inet" || $i == "inet6") { a = $(i + 1); '
             'sub("/.*", "", a); sub("%.*", "", a); print "addresses\\t" a } }')
    return f"{{ {ADDRESS_LISTING[platform.name]}; }} 2>/dev/null | awk '{words}'"


def _global_addresses(lines: list[list[str]]) -> tuple[str, ...]:
    found = []
    for fields in lines:
        try:
            address = ipaddress.ip_address(fields[0])
        except (ValueError, IndexError):
            continue
        if not (address.is_loopback or address.is_link_local or address.is_multicast or address.is_unspecified):
            found.append(str(address))
    return tuple(dict.fromkeys(found))


COMPONENT = Component(
    name="dns",
    settings=(
        Setting("public_addresses", None, _addresses_setting,
                "the addresses the Internet reaches the host at (its A/AAAA records); default: the host's own"),
        Setting("dmarc_policy", "none", _choice("dmarc_policy", DMARC_POLICIES),
                "the DMARC policy records.py prints: none (monitor), quarantine or reject"),
        Setting("dmarc_reports", None, _address("dmarc_reports"),
                "where DMARC aggregate reports go (rua); default: none asked for"),
        Setting("tls_reports", None, _address("tls_reports"),
                "where TLS-RPT reports go; default: postmaster@ each domain"),
        Setting("dns_server", None, _server,
                "the resolver the DNS checks ask (ADDRESS or ADDRESS@PORT); default: the laptop's"),
    ),
    probes=(Probe("addresses", _addresses_probe, _global_addresses, tuple),),
    dns_records=mail_domain_records,
    checks=(check_dns_mx, check_dns_address, check_dns_ptr, check_dns_spf, check_dns_dkim, check_dns_dmarc,
            check_dns_tlsrpt, check_dns_srv),
)
