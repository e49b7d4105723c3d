"""qmailhost (submission/): what a logged-in account may send, in front of qmail-queue (QMAILQUEUE).

The AUTH-patched ofmipd runs this in place of qmail-queue, with the message on fd 0, the
envelope on fd 1 ("F<sender>\\0T<recipient>\\0...\\0") and the account that logged in in
TCPREMOTEINFO (ofmipd sets it at AUTH). The mail is passed to the real qmail-queue only when
- the envelope sender is empty or one of the account's addresses,
- every address in From: (and Sender:) is one of them,
- it has at most max_recipients recipients and at most databytes bytes.
Otherwise it exits 31: ofmipd answers "554 mail server permanently rejected message" and
the refusal, with its reason, goes to the mail log (syslog's mail facility: after AUTH the
patched ofmipd's stderr is the client's connection, so nothing is written there). An
account's addresses (the table beside this file, written by the deploy): its own name and
its extensions (name-anything) at every local domain, the aliases that point at it, every
address of a virtual domain delivered to it, and what extra_senders grants it. Local parts
and domains compare without case. Standard library only; the message is streamed to a
spool file, never held whole.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import json
import os
import stat
import sys
import syslog
import tempfile

TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "senders.json")
REFUSED = 31  # qmail-queue's "mail server permanently rejected message" (#5.3.0)
TEMPORARY = 71  # qmail-queue's "temporarily refused": the client tries again
HEADER_MAX = 1_000_000  # bytes of header read before the body; more is refused
CHUNK = 65536


def owns(account: dict, address: str) -> bool:
    """ADDRESS is one of ACCOUNT's (its table entry: exact addresses, extension bases, domains)."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at or not local or not domain:
        return False
    if f"{local}@{domain}" in account["addresses"] or domain in account["domains"]:
        return True
    return any(domain == base_domain and local.startswith(base + "-")
               for base, _, base_domain in (b.partition("@") for b in account["extensions"]))


def envelope_of(data: bytes) -> tuple[str, list[str]]:
    """(sender, recipients) of qmail-queue's envelope."""
    fields = data.split(b"\0")
    sender = fields[0][1:].decode(errors="replace") if fields and fields[0][:1] == b"F" else None
    if sender is None:
        raise ValueError("the envelope has no sender")
    return sender, [f[1:].decode(errors="replace") for f in fields[1:] if f[:1] == b"T"]


def header_addresses(header: bytes, name: str) -> list[str] | None:
    """Every address in the NAME fields of HEADER; None when one cannot be read as addresses."""
    fields = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header + b"\n").get_all(name)
    found = []
    for value in fields or []:
        addresses = email.utils.getaddresses([str(value)])
        if not addresses or any("@" not in address for _, address in addresses):
            return None
        found += [address for _, address in addresses]
    return found


def refusal(table: dict, user: str | None, sender: str, recipients: list[str], header: bytes, size: int) -> str | None:
    """Why this submission is refused, or None."""
    account = table["accounts"].get(user or "")
    if account is None:
        return f"{user!r} is no mail account this host knows"
    if len(recipients) > table["max_recipients"]:
        return f"{len(recipients)} recipients, over max_recipients ({table['max_recipients']})"
    if size > table["databytes"]:
        return f"over databytes ({table['databytes']} bytes)"
    if sender and not owns(account, sender):
        return f"envelope sender {sender} is not {user}'s"
    for name in ("From", "Sender"):
        addresses = header_addresses(header, name)
        if addresses is None:
            return f"{name}: holds something that is not an address"
        strangers = [a for a in addresses if not owns(account, a)]
        if strangers:
            return f"{name}: {strangers[0]} is not {user}'s"
    return None


def read_message(spool, limit: int) -> tuple[bytes, int]:
    """Copy fd 0 into SPOOL (at most LIMIT + 1 bytes): (its header, the size read)."""
    source, size, header, in_body = sys.stdin.buffer, 0, b"", False
    while size <= limit:
        chunk = source.read(min(CHUNK, limit + 1 - size))
        if not chunk:
            break
        spool.write(chunk)
        size += len(chunk)
        if not in_body:
            header += chunk
            end = header.find(b"\n\n")
            if end >= 0:
                header, in_body = header[:end + 1], True
            elif len(header) > HEADER_MAX:
                raise ValueError("a header over 1 MB")
    return header, size


def drain() -> None:
    """Read the rest of the message and let it go. ofmipd writes the message to its queue
    program as it arrives: one that stops reading makes it die mid-DATA, and the client sees
    a dropped connection instead of the refusal (qmail-smtpd's databytes reads to the end too)."""
    try:
        while sys.stdin.buffer.read(CHUNK):
            pass
    except OSError:
        pass


def say(line: str) -> None:
    """LINE to the mail log, or to stderr where that is no connection (a test, a shell)."""
    try:
        connection = stat.S_ISSOCK(os.fstat(2).st_mode)
    except OSError:
        connection = True
    if connection:
        syslog.openlog("qmailhost-senders", syslog.LOG_PID, syslog.LOG_MAIL)
        syslog.syslog(syslog.LOG_NOTICE, line)
    else:
        print(f"qmailhost senders: {line}", file=sys.stderr)


def main() -> None:
    """In qmail-queue's order: the whole message from fd 0 first, then the envelope from fd 1
    (ofmipd writes the envelope only once the message is written: reading fd 1 first would
    wait for ever on any message over a pipe's buffer)."""
    user = os.environ.get("TCPREMOTEINFO")
    try:
        with open(TABLE) as table_file:
            table = json.load(table_file)
        message = tempfile.TemporaryFile()  # noqa: SIM115 (becomes fd 0 of qmail-queue)
        try:
            header, size = read_message(message, table["databytes"])
            unreadable = None
        except ValueError as error:
            header, size, unreadable = b"", 0, str(error)
        drain()  # the rest of a message over databytes (nothing, otherwise)
        envelope = os.fdopen(1, "rb", closefd=False).read()
        sender, recipients = envelope_of(envelope)
        why = unreadable or refusal(table, user, sender, recipients, header, size)
    except (OSError, ValueError, KeyError) as error:
        say(str(error))
        sys.exit(TEMPORARY if isinstance(error, OSError | KeyError) else REFUSED)
    if why:
        say(f"refused {user}'s mail from <{sender}>: {why}")
        sys.exit(REFUSED)
    with tempfile.TemporaryFile() as spool:
        spool.write(envelope)
        spool.flush()
        spool.seek(0)
        os.dup2(spool.fileno(), 1)
    message.flush()
    message.seek(0)
    os.dup2(message.fileno(), 0)
    try:
        os.execv(table["queue"], [table["queue"]])
    except OSError as error:
        say(f"cannot run {table['queue']}: {error}")
        sys.exit(TEMPORARY)


if __name__ == "__main__":
    main()
