"""Limits: what one client address may hold, and how long any session may last.

- Connections per address: an nftables table of its own (``qmailhost_limits``) caps the
  connections one address holds at once on the SMTP ports (25, 465, 587:
  ``connections_per_address``) and on the IMAP and POP3 ports (993, 143, and 995 when on:
  ``imap_connections_per_address``); past the cap its next connection is reset, while other
  addresses still get in. tcpserver's own limit (``smtp_connections``) is for everyone at
  once; this is the one that stops a single address filling it. Behind stunnel every
  submission comes from 127.0.0.1, so the cap can only be kept where the packet arrives.
  Loaded with ``nft -f`` when the rules change or the live table is not what was loaded (a
  hand edit, a reboot without systemd), and at boot by ``qmailhost-limits.service`` where
  systemd runs.
- Whole sessions: ``session_seconds`` ends any SMTP session, idle or not, on port 25
  (spamdyke's connection-timeout-secs) and on submission (tasks/submission.py: the ofmipd
  run under ``timeout``; spamdyke's limit in its mode); stunnel drops idle clients
  (tasks/stunnel.py).
- NetBSD: npf keeps no count per source address, so there the caps are not made (the run
  says so once); the session limits and the login brake (tasks/accounts.py) are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.operations import systemd

from qmailhost import ops
from qmailhost.component import Component, Needs, Probe, Setting
from qmailhost.facts import STATE_DIR, host_state
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, whole_number

TABLE = "qmailhost_limits"
RULES = "/etc/qmailhost/limits.nft"
LOADED = f"{STATE_DIR}/limits-loaded.sha256"  # the live table's listing as it was right after loading
UNIT = "qmailhost-limits.service"
NFT = "/usr/sbin/nft"


@dataclass(frozen=True)
class PortGroup:
    name: str
    what: str
    ports: tuple[int, ...]
    cap: int


def port_groups(settings: Settings) -> tuple[PortGroup, ...]:
    smtp = (settings.smtp_port, settings.submission_port,
            *([settings.submissions_port] if settings.submissions_port else []))
    imap = (settings.imaps_port, *([settings.imap_port] if settings.imap_port else []),
            *([settings.pop3s_port] if settings.pop3s_port else []))
    return (PortGroup("smtp", "SMTP (mail from the Internet, submission)", smtp, settings.connections_per_address),
            PortGroup("imap", "IMAP (and POP3)", imap, settings.imap_connections_per_address))


def rules(settings: Settings) -> str:
    return render("limits/limits.nft.j2", table=TABLE, groups=port_groups(settings))


_LISTING = f"{NFT} -t list table inet {TABLE} 2>/dev/null | sha256sum | cut -d' ' -f1"


@deploy("limits")
def configure(platform: Platform, settings: Settings) -> None:
    if platform.name != "debian":
        host.log(f"connections_per_address is not kept on {platform.name} (its firewall counts no connections "
                 "per source address); session_seconds and the login brake are", logger.warning)
        return
    wanted = rules(settings)
    rewritten = ops.differs(RULES, wanted)
    ops.whole_file(name="Write the per-address connection caps (nftables)", dest=RULES, mode="644", content=wanted)
    live = host_state()["limits"]
    needed = rewritten or live is None or live["listing"] != live["loaded"]
    ops.decided(name="Load the per-address connection caps",
                command=f"{NFT} -f {RULES} && {_LISTING} > {LOADED}", needed=needed,
                why_not="the live table is the one last loaded from the rules")
    if host_state().get("systemd"):
        ops.whole_file(name=f"Write {UNIT} (loads the caps at boot)", dest=f"/etc/systemd/system/{UNIT}",
                       content=render("limits/qmailhost-limits.service.j2", nft=NFT, rules=RULES))
        systemd.service(name=f"Enable {UNIT}", service=UNIT, enabled=True, daemon_reload=True)


def _live_probe(platform: Platform, _settings: Settings) -> str:
    if platform.name != "debian":
        return "true"
    return (f"if {NFT} list table inet {TABLE} >/dev/null 2>&1; then "
            f"printf 'limits\\t%s\\t%s\\n' \"$({_LISTING})\" \"$(cat {LOADED} 2>/dev/null || echo none)\"; fi")


def _live(lines: list[list[str]]) -> dict | None:
    listing, loaded = (lines[0] + ["", ""])[:2] if lines else ("", "")
    return {"listing": listing, "loaded": loaded}


NEEDS = {"debian": Needs(packages=("nftables",)), "netbsd": Needs()}


COMPONENT = Component(
    name="limits",
    needs=lambda platform, _settings: NEEDS[platform.name],
    settings=(
        Setting("connections_per_address", 10, whole_number("connections_per_address", 1, 1000),
                "connections one client address may hold at once on each of 25, 465 and 587 (nftables; Debian)"),
        Setting("imap_connections_per_address", 20, whole_number("imap_connections_per_address", 1, 1000),
                "connections one client address may hold at once on each of 993, 143 and 995 (a phone and a "
                "laptop behind one router each keep several)"),
        Setting("session_seconds", 900, whole_number("session_seconds", 10, 86_400),
                "the longest an SMTP session may last, idle or not, on 25 and on submission"),
    ),
    probes=(Probe("limits", _live_probe, _live, lambda: None),),
)
