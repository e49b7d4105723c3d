"""qmailhost (dkim/): the DKIM signer qmail-send runs in place of qmail-remote (QMAILREMOTE).

Installed as the host's signer with the platform's python3 on its first line. qmail-rspawn
runs it as qmailr with qmail-remote's arguments (HOST SENDER RECIPIENT...) and the message
on stdin. When the sender's domain is one the host signs for (the signing table beside
this file, written by the deploy) and the message was submitted or made on this host
(``made_here``), it signs the message with every key of that domain
(RSA, and ed25519 when asked for), then hands the signed message to the real qmail-remote,
unchanged otherwise. Nothing unsigned leaves for a signing domain: any failure (a key
missing or unreadable, a signature that did not come out) prints qmail-remote's temporary
failure (a "Z" report ended by a NUL), so qmail-send keeps the message and retries.
Standard library and python3-dkim (dkimpy) only: it runs on the host, apart from qmailhost.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "signing")
ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


def read_table(path: str = TABLE) -> tuple[str, dict[str, list[tuple[str, str, str]]]]:
    """(the real qmail-remote, {domain: [(selector, algorithm, key file), ...]})."""
    remote, keys = None, {}
    with open(path) as table:
        for line in table:
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "remote":
                remote = words[1]
            elif words[0] == "sign":
                keys.setdefault(words[1].lower(), []).append((words[2], words[3], words[4]))
    if remote is None:
        raise ValueError(f"{path} names no qmail-remote")
    return remote, keys


# qmail-queue's own first line (qmail-queue.c): who ran it. "from network" is qmail-smtpd (port 25),
# "by alias" a forward through ~alias; a forward through an account's .qmail comes "by uid" with
# qmail-local's Delivered-To right below. Only what is left was submitted (ofmipd) or made here.
QUEUED = re.compile(rb"Received: \(qmail \d+ invoked (by uid \d+|for bounce|by alias|from network)\); ")


def made_here(message: bytes) -> bool:
    """MESSAGE was submitted by an account or made on this host, not received or forwarded."""
    first, _, rest = message.partition(b"\n")
    queued = QUEUED.match(first)
    if queued is None or queued.group(1) in (b"by alias", b"from network"):
        return False
    return rest[:len(b"delivered-to:")].lower() != b"delivered-to:"


def signed(message: bytes, domain: str, keys: list[tuple[str, str, str]]) -> bytes:
    """MESSAGE with one DKIM-Signature per key, first; raises if any key cannot sign."""
    import dkim

    signatures = []
    for selector, algorithm, key_file in keys:
        with open(key_file, "rb") as key:
            private = key.read()
        signature = dkim.sign(message, selector.encode(), domain.encode(), private,
                              canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=ALGORITHMS[algorithm],
                              linesep=b"\n")
        # dkimpy's own CLI passes the message on unsigned when signing fails: check what came out.
        if not signature.startswith(b"DKIM-Signature:"):
            raise ValueError(f"no signature for {domain} with selector {selector}")
        signatures.append(signature)
    return b"".join(signatures) + message


def defer(why: str) -> None:
    """qmail-remote's temporary failure for the whole message: qmail-send retries it later."""
    text = " ".join(why.split())[:300]
    sys.stdout.buffer.write(b"ZDKIM signing failed, message kept in the queue: " + text.encode(errors="replace")
                            + b"\0")
    sys.stdout.buffer.flush()
    sys.exit(0)


def main(argv: list[str]) -> None:
    try:
        remote, table = read_table()
        message = sys.stdin.buffer.read()
        sender = argv[2] if len(argv) > 2 else ""
        domain = sender.rpartition("@")[2].lower() if "@" in sender else ""
        if domain in table and made_here(message):
            message = signed(message, domain, table[domain])
        with tempfile.TemporaryFile() as spool:
            spool.write(message)
            spool.flush()
            spool.seek(0)
            os.dup2(spool.fileno(), 0)
        os.execv(remote, [remote, *argv[1:]])
    except SystemExit:
        raise
    except BaseException as error:  # any failure defers: an exit code other than 0 would bounce the mail
        defer(f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    main(sys.argv)
