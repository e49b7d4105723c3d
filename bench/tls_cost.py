"""What TLS costs on port 25, both ways, in one run: messages a second into port 25 from
the laptop with STARTTLS and without (parallel senders, one SMTP session per message as a
peer server sends), and out of qmail-remote to a Postfix peer (harness/peer.py) over TLS
and with the peer in notlshosts (plaintext). Written to bench/results-tls.json and, with
--readme, as the README's TLS table. Never an assertion of the test suite.

    python -m bench.tls_cost [--messages 200] [--senders 4] [--readme]
"""

from __future__ import annotations

import argparse
import os
import smtplib
import threading
import time

from bench.run import machine, publish
from harness import sandbox
from harness.dns_server import DnsServer
from harness.mail import message, tls_context
from harness.peer import PostfixPeer, link
from harness.pyinfra_cli import PROJECT, pyinfra

RESULTS = PROJECT / "bench" / "results-tls.json"
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN
PEER_DOMAIN, PEER_MX = "peer.example.net", "mx.peer.example.net"


def maildir_count(host: sandbox.Host, user: str) -> int:
    return int(host.ssh(f"ls /home/{user}/Maildir/new | wc -l").stdout.strip())


def wait_count(host: sandbox.Host, user: str, target: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while (count := maildir_count(host, user)) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count} of {target} messages arrived in {user}'s Maildir")
        time.sleep(0.2)
    return time.monotonic()


def inbound(host: sandbox.Host, messages: int, senders: int, starttls: bool) -> dict:
    """Messages a second accepted on port 25 and delivered, SENDERS sessions at once."""
    before = maildir_count(host, USER)
    per_sender, errors = messages // senders, []

    def send() -> None:
        for _ in range(per_sender):
            try:
                with smtplib.SMTP(host.address, 25, timeout=60, local_hostname="bench.example.net") as client:
                    client.ehlo()
                    if starttls:
                        client.starttls(context=tls_context())
                        client.ehlo()
                    client.send_message(message(f"bench@{PEER_DOMAIN}", f"{USER}@{DOMAIN}"))
            except (OSError, smtplib.SMTPException) as error:
                errors.append(repr(error))

    start = time.monotonic()
    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = time.monotonic() - start
    sent = per_sender * senders - len(errors)
    delivered = wait_count(host, USER, before + sent) - start
    return {"messages": sent, "errors": len(errors), "accepted_per_s": round(sent / accepted, 1),
            "delivered_per_s": round(sent / delivered, 1)}


def outbound(host: sandbox.Host, peer: PostfixPeer, messages: int) -> dict:
    """Messages a second from qmail's queue into the peer's Maildir (qmail-remote, in parallel)."""
    before = maildir_count(peer.host, peer.user)
    script = (f"for i in $(seq {messages}); do printf 'From: {USER}@{DOMAIN}\\nTo: bob@{PEER_DOMAIN}\\n"
              f"Subject: bench $i\\n\\nbody\\n' | /var/qmail/bin/qmail-inject; done")
    start = time.monotonic()
    host.ssh(script, timeout=600)
    delivered = wait_count(peer.host, peer.user, before + messages) - start
    return {"messages": messages, "delivered_per_s": round(messages / delivered, 1)}


def measure(messages: int, senders: int) -> dict:
    host = sandbox.create(f"bench{os.getpid()}-tls")
    peer_host = sandbox.create(f"bench{os.getpid()}-peer")
    dns = DnsServer({(PEER_DOMAIN, "MX"): [PEER_MX], (PEER_MX, "A"): [host.gateway]}, address=host.gateway)
    relays = link(host, peer_host)
    try:
        peer = PostfixPeer(peer_host, domain=PEER_DOMAIN, hostname=PEER_MX)
        peer.install()
        data = {"dns_forwarders": [f"{host.gateway}@{dns.port}"], "verify_after_deploy": False}
        pyinfra(host, data=data)
        results = {"machine": machine(), "senders": senders}
        inbound(host, 20, senders, True)  # warm-up: the first sessions pay for caches
        results["inbound_plain"] = inbound(host, messages, senders, starttls=False)
        results["inbound_tls"] = inbound(host, messages, senders, starttls=True)
        results["outbound_tls"] = outbound(host, peer, messages)
        pyinfra(host, data={**data, "notlshosts": [PEER_MX]})
        results["outbound_plain"] = outbound(host, peer, messages)
        for way in ("inbound", "outbound"):
            results[f"{way}_tls_ratio"] = round(results[f"{way}_plain"]["delivered_per_s"]
                                                / results[f"{way}_tls"]["delivered_per_s"], 2)
        results["inbound_accept_tls_ratio"] = round(results["inbound_plain"]["accepted_per_s"]
                                                    / results["inbound_tls"]["accepted_per_s"], 2)
        return results
    finally:
        relays.close()
        dns.close()
        sandbox.destroy(peer_host.name)
        sandbox.destroy(host.name)


def table(results: dict) -> str:
    m, senders = results["machine"], results["senders"]
    rows = [
        (f"into port 25, accepted ({senders} senders at once)", results["inbound_plain"]["accepted_per_s"],
         results["inbound_tls"]["accepted_per_s"], results["inbound_accept_tls_ratio"]),
        ("into port 25, delivered to the Maildir", results["inbound_plain"]["delivered_per_s"],
         results["inbound_tls"]["delivered_per_s"], results["inbound_tls_ratio"]),
        ("out of qmail-remote into Postfix's Maildir", results["outbound_plain"]["delivered_per_s"],
         results["outbound_tls"]["delivered_per_s"], results["outbound_tls_ratio"]),
    ]
    lines = [f"Measured {m['date']} on {m['cores']} cores ({m['cpu']}), one run of "
             f"{results['inbound_tls']['messages']} messages each way and mode; TLS 1.3 (X25519, RSA-3072 "
             "certificate on 25, RSA-2048 at the peer).", "",
             "| messages a second | without TLS | with TLS | ratio |", "|---|---|---|---|"]
    lines += [f"| {name} | {plain} | {tls} | {ratio}x |" for name, plain, tls, ratio in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tls_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    options = parser.parse_args()
    results = measure(options.messages, options.senders)
    publish(results, RESULTS, table(results), options.readme, "bench-tls")


if __name__ == "__main__":
    main()
