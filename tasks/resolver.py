"""The host's own caching resolver: unbound on 127.0.0.1:53, asked by spamdyke (tasks/spamdyke.py)
for its DNS blocklists and rDNS checks.

Why a resolver of its own: DNS blocklists such as Spamhaus refuse queries that reach them
through public or shared resolvers (most VPS hosts use their provider's) and answer them
with an address in 127.255.255.0/24, which spamdyke (like any DNSBL client that counts
any A record) takes as "listed": every sender would be refused. unbound recursing from
the root asks from the host's own address. ``dns_forwarders`` makes it ask given
resolvers instead. The status check asks each configured blocklist's test points
through it and says when a list refuses the resolver.

Debian: the unbound package, supervised by daemontools like every other service (its
own systemd units are stopped and disabled where systemd runs, so 127.0.0.1:53 has one
owner). NetBSD: pkgsrc's net/unbound, through its rc.d script.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass

from pyinfra.api import deploy
from pyinfra.operations import systemd

from qmailhost import ops
from qmailhost.backends import services
from qmailhost.component import Component, Listener, Needs, Setting
from qmailhost.facts import host_state
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, SettingsError

ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class Paths:
    program: str
    config: str
    directory: str  # unbound's working directory
    user: str
    dig: str  # asks a resolver, for the status check
    units: tuple[str, ...] = ()  # the package's own systemd units, which would hold port 53 too


PATHS = {
    "debian": Paths("/usr/sbin/unbound", "/etc/qmailhost/unbound.conf", "/etc/unbound", "unbound", "dig",
                    units=("unbound.service", "unbound-resolvconf.service")),
    "netbsd": Paths("/usr/pkg/sbin/unbound", "/usr/pkg/etc/unbound/unbound.conf", "/usr/pkg/etc/unbound",
                    "unbound", "dig"),
}


@deploy("resolver")
def configure(platform: Platform, settings: Settings) -> None:
    paths = PATHS[platform.name]
    if host_state().get("systemd"):
        for unit in paths.units:
            systemd.service(name=f"Stop and disable {unit} (qmailhost supervises unbound)", service=unit,
                            running=False, enabled=False)
    config = render("resolver/unbound.conf.j2", address=ADDRESS, user=paths.user, directory=paths.directory,
                    forwarders=settings.dns_forwarders)
    rewritten = ops.differs(paths.config, config)
    ops.whole_file(name="Write unbound's config", dest=paths.config, content=config)
    services.declare(platform, services.Service(
        name="unbound", description=f"the host's caching resolver on {ADDRESS}:53",
        run=render("resolver/unbound.run.j2", address=ADDRESS, user=paths.user, program=paths.program,
                   config=paths.config),
        rcd=services.Rcd("unbound", (("flags", f"-c {paths.config}"),)),
        reads_at_start=(config,), rewritten=rewritten,
    ))


def query_command(platform: Platform, name: str) -> str:
    """Ask the host's resolver for NAME's A records (the addresses, one a line; nothing: none)."""
    return f"{PATHS[platform.name].dig} @{ADDRESS} +short +time=3 +tries=2 A {shlex.quote(name)}"


_FORWARDER = re.compile(r"^(?P<address>[0-9a-f.:]+)(@(?P<port>\d{1,5}))?$")


def _forwarders(value, _values=None) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise SettingsError("dns_forwarders", f"{value!r} is not a list", "write it as [\"192.0.2.53\"], or []")
    for entry in value:
        match = _FORWARDER.fullmatch(str(entry))
        try:
            # IPv4 only: unbound here speaks no IPv6 (do-ip6: no), so an IPv6 forwarder is never reached.
            if match and ipaddress.ip_address(match["address"]).version != 4:
                raise SettingsError("dns_forwarders", f"{entry!r} is an IPv6 address, and the host's resolver "
                                    "asks over IPv4 only", "give IPv4 addresses")
        except ValueError:
            match = None
        if not match or (match["port"] and not 0 < int(match["port"]) < 65536):
            raise SettingsError("dns_forwarders", f"{entry!r} is not an address (with an optional @port)",
                                "use entries like \"192.0.2.53\" or \"192.0.2.53@5353\"")
    return tuple(value)


NEEDS = {"debian": Needs(packages=("unbound", "bind9-dnsutils")), "netbsd": Needs(packages=("unbound",))}


COMPONENT = Component(
    name="resolver",
    needs=lambda platform, _settings: NEEDS[platform.name],
    settings=(Setting("dns_forwarders", [], _forwarders,
                      "resolvers the host's unbound asks instead of recursing itself (blocklists may refuse "
                      "shared ones); `[]`: recurse from the root"),),
    listeners=lambda settings: (Listener("unbound", "unbound", "the host's caching resolver", 53, public=False),),
)
