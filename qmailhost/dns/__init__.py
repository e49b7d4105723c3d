"""DNS: what the rest of the mail world looks up about this host, checked from outside.

The host never edits DNS itself; these status checks compare what the domains publish
with what the host is: each domain's MX points at it, its name has an address (the one
the laptop reaches), each address points back at the name (PTR), each domain has SPF.
Names no public DNS serves (.test, .example, ...) are skipped, saying so, as is a laptop
with no resolver to ask.
"""

from __future__ import annotations

import ipaddress

from qmailhost.core.checks import ERROR, OK, SKIPPED, WARNING
from qmailhost.core.component import Component

# Names no public DNS serves (RFC 2606, 6761, 6762, 8375): nothing to look up.
RESERVED_DOMAINS = ("test", "example", "invalid", "localhost", "local", "home.arpa",
                    "example.com", "example.net", "example.org")


def check_dns_mx(target):
    """Each domain's MX points at the host."""
    if skip := _dns_skip(target):
        return skip
    hostname = target.settings.hostname
    wrong = []
    for domain in target.settings.domains:
        exchanges = target.dns.lookup(domain, "MX")
        if hostname not in exchanges:
            wrong.append(f"{domain} MX {', '.join(exchanges) or 'missing'}")
    if wrong:
        return ERROR, f"not pointing at {hostname}: {'; '.join(wrong)}"
    return OK, f"MX of {', '.join(target.settings.domains)} point at {hostname}"


def check_dns_address(target):
    """The host name has an address, the one the laptop reaches."""
    if skip := _dns_skip(target):
        return skip
    hostname = target.settings.hostname
    addresses = _addresses(target)
    if not addresses:
        return ERROR, f"{hostname} has no A or AAAA record"
    if _is_ip(target.address) and target.address not in addresses:
        return WARNING, f"{hostname} is {', '.join(addresses)}, but the host was reached at {target.address}"
    return OK, f"{hostname} is {', '.join(addresses)}"


def check_dns_ptr(target):
    """Each of the host's addresses points back at its name (receivers check this)."""
    if skip := _dns_skip(target):
        return skip
    hostname = target.settings.hostname
    if not _addresses(target):
        return SKIPPED, f"{hostname} has no address to look up (see dns_address)"
    wrong = [f"{address} -> {', '.join(names) or 'no PTR'}" for address in _addresses(target)
             if hostname not in (names := target.dns.lookup(ipaddress.ip_address(address).reverse_pointer, "PTR"))]
    if wrong:
        # Behind a smarthost, other servers never see this host's PTR.
        status = WARNING if "" in target.settings.smtproutes else ERROR
        return status, f"not pointing back at {hostname}: {'; '.join(wrong)}"
    return OK, f"PTR of each address is {hostname}"


def check_dns_spf(target):
    """Each domain publishes an SPF record."""
    if skip := _dns_skip(target):
        return skip
    missing = [domain for domain in target.settings.domains
               if not any(txt.startswith("v=spf1") for txt in target.dns.lookup(domain, "TXT"))]
    if missing:
        return WARNING, f"no SPF TXT record for {', '.join(missing)}"
    return OK, f"SPF TXT present for {', '.join(target.settings.domains)}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _reserved(name: str) -> str | None:
    return next((suffix for suffix in RESERVED_DOMAINS if name == suffix or name.endswith("." + suffix)), None)


def _dns_skip(target) -> tuple[str, str] | None:
    """A skipped result when there is no public DNS to ask about these names."""
    names = [target.settings.hostname, *target.settings.domains]
    if all(_reserved(name) for name in names):
        return SKIPPED, f"no DNS for {target.settings.hostname}: .{_reserved(names[0])} is reserved, never public"
    if reason := target.dns.unreachable:
        return SKIPPED, f"no DNS: {reason}"
    return None


def _addresses(target) -> list[str]:
    hostname = target.settings.hostname
    return target.dns.lookup(hostname, "A") + target.dns.lookup(hostname, "AAAA")


COMPONENT = Component(name="dns", checks=(check_dns_mx, check_dns_address, check_dns_ptr, check_dns_spf))
