"""What DKIM costs, both ways, in one run: messages a second out of qmail-remote into a
Postfix peer (harness/peer.py) with every message signed by the signer in front of
qmail-remote, and with ``dkim: false``; and into port 25 (parallel senders, one session
per message, STARTTLS as peers use it) with the inbound filter adding Authentication-Results
(a DKIM verification and an SPF lookup per message) and with ``authentication_results: false``.
Written to bench/results-dkim.json and, with --readme, as the README's DKIM table. Never an
assertion of the test suite.

    python -m bench.dkim_cost [--messages 200] [--senders 4] [--readme]
"""

from __future__ import annotations

import argparse
import os

from bench.run import machine, publish
from bench.tls_cost import PEER_DOMAIN, PEER_MX, inbound, outbound
from harness import sandbox
from harness.dns_server import DnsServer
from harness.peer import PostfixPeer, link
from harness.pyinfra_cli import PROJECT, pyinfra

RESULTS = PROJECT / "bench" / "results-dkim.json"


def measure(messages: int, senders: int) -> dict:
    host = sandbox.create(f"bench{os.getpid()}-dkim")
    peer_host = sandbox.create(f"bench{os.getpid()}-peer")
    dns = DnsServer({(PEER_DOMAIN, "MX"): [PEER_MX], (PEER_MX, "A"): [host.gateway],
                     (PEER_DOMAIN, "TXT"): [f"v=spf1 ip4:{host.gateway} -all"]}, address=host.gateway)
    relays = link(host, peer_host)
    try:
        peer = PostfixPeer(peer_host, domain=PEER_DOMAIN, hostname=PEER_MX)
        peer.install()
        data = {"dns_forwarders": [f"{host.gateway}@{dns.port}"], "verify_after_deploy": False}
        pyinfra(host, data=data)
        results = {"machine": machine(), "senders": senders}
        inbound(host, 20, senders, True)  # warm-up: the first sessions pay for caches
        results["inbound_results"] = inbound(host, messages, senders, starttls=True)
        results["outbound_signed"] = outbound(host, peer, messages)
        pyinfra(host, data={**data, "dkim": False, "authentication_results": False})
        results["inbound_plain"] = inbound(host, messages, senders, starttls=True)
        results["outbound_plain"] = outbound(host, peer, messages)
        results["outbound_ratio"] = round(results["outbound_plain"]["delivered_per_s"]
                                          / results["outbound_signed"]["delivered_per_s"], 2)
        results["inbound_ratio"] = round(results["inbound_plain"]["delivered_per_s"]
                                         / results["inbound_results"]["delivered_per_s"], 2)
        return results
    finally:
        relays.close()
        dns.close()
        sandbox.destroy(peer_host.name)
        sandbox.destroy(host.name)


def table(results: dict) -> str:
    m, senders = results["machine"], results["senders"]
    rows = [
        ("out of qmail-remote into Postfix's Maildir (signed: one RSA-2048 signature each)",
         results["outbound_plain"]["delivered_per_s"], results["outbound_signed"]["delivered_per_s"],
         results["outbound_ratio"]),
        (f"into port 25 with STARTTLS, delivered ({senders} senders; DKIM and SPF checked)",
         results["inbound_plain"]["delivered_per_s"], results["inbound_results"]["delivered_per_s"],
         results["inbound_ratio"]),
    ]
    lines = [f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), one run of "
             f"{results['outbound_signed']['messages']} messages each way and setting.", "",
             "| messages a second | off | on | ratio |", "|---|---|---|---|"]
    lines += [f"| {name} | {off} | {on} | {ratio}x |" for name, off, on, ratio in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dkim_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    options = parser.parse_args()
    results = measure(options.messages, options.senders)
    publish(results, RESULTS, table(results), options.readme, "bench-dkim")


if __name__ == "__main__":
    main()
