"""qmailhost (dkim/): the inbound filter in front of qmail-queue on port 25 (QMAILQUEUE).

Installed with the platform's python3 on its first line; qmail-smtpd runs it as qmaild
with the message on fd 0 and the envelope on fd 1, as it would run qmail-queue. It
prepends one ``Authentication-Results:`` header (RFC 8601) naming this host: the result of
each DKIM signature (pass, fail, permerror, temperror; none without one) and SPF of the
envelope sender from the client's address (TCPREMOTEIP), removes any such header a sender
forged in this host's name, then hands message and envelope to the real qmail-queue.
Mail is never lost to a verification problem: a DNS failure is a temperror in the header.
Only when qmail-queue cannot be run does it exit 71 (a temporary refusal, 451).

What one message may cost is bounded: the first MAX_SIGNATURES signatures are verified
(the rest get one "policy" result); a key over MAX_KEY_BITS or with an exponent over
MAX_EXPONENT_BITS is a permerror before any arithmetic (a 16384-bit modulus and exponent
cost seconds of CPU each); past TIME_BUDGET the remaining results are temperror. Port 25
runs under softlimit -m 64000000; the filter raises its own soft limit (a soft limit may be
raised up to the hard one) to what a message of control/databytes needs, held about five
times over (qmail-smtpd runs it in qmail's home), and at least FILTER_MEMORY, so a message
up to databytes is handed on.
Headers claiming this host's authserv-id are removed by the parsed id (RFC 8601: any
comment, version, quoting, case or trailing dot), and what comes from the envelope is
written as one quoted value, so a sender cannot add results to ours.
Standard library, python3-dkim (dkimpy, with dnspython) and python3-spf (pyspf) only.
"""

from __future__ import annotations

import os
import re
import resource
import sys
import tempfile
import time

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inbound")
DNS_TIMEOUT = 5  # seconds per lookup
TEMPORARY_REFUSAL = 71  # qmail-queue's "temporarily refused" exit code
MAX_SIGNATURES = 5  # verified per message; the rest are reported, not verified
MAX_KEY_BITS = 4096  # RFC 8301 keys are 1024 to 4096 bits
MAX_EXPONENT_BITS = 32  # real keys use 65537 (17 bits)
TIME_BUDGET = 20.0  # seconds for all of a message's DKIM results; past it: temperror
FILTER_MEMORY = 512_000_000  # bytes: the least soft limit the filter gives itself (port 25 has 64 MB)
# Measured: a 19 MB message peaks at 112 MB, a 64 MB one at 315 MB (about 4.6 times, plus Python).
MEMORY_PER_MESSAGE_BYTE = 6
DATABYTES = "control/databytes"  # relative to qmail's home, where qmail-smtpd runs (chdir) its queue


class TemporaryDnsError(Exception):
    pass


class UnacceptableKey(Exception):
    """A published key this filter will not compute with (too large a modulus or exponent)."""


def check_key(record: bytes | None) -> None:
    """Raise UnacceptableKey when RECORD's RSA key is over MAX_KEY_BITS or its exponent over
    MAX_EXPONENT_BITS: refused before dkimpy's arithmetic (pure Python) runs with it."""
    if not record:
        return
    from dkim.crypto import parse_public_key
    from dkim.util import parse_tag_value

    try:
        tags = parse_tag_value(record)
        if tags.get(b"k", b"rsa").strip().lower() != b"rsa":
            return
        import base64

        key = parse_public_key(base64.b64decode(re.sub(rb"\s+", b"", tags[b"p"])))
    except Exception:
        return  # not parseable: dkimpy says why
    if key["modulus"].bit_length() > MAX_KEY_BITS:
        raise UnacceptableKey(f"key of {key['modulus'].bit_length()} bits is over {MAX_KEY_BITS}")
    if key["publicExponent"].bit_length() > MAX_EXPONENT_BITS:
        raise UnacceptableKey(f"key exponent of {key['publicExponent'].bit_length()} bits")


def read_config(path: str = CONFIG) -> dict[str, str]:
    """{"authserv-id": this host's name, "queue": the real qmail-queue, "resolver": the
    host's own resolver (resolver/: unbound on 127.0.0.1), which DKIM and SPF lookups ask}."""
    with open(path) as config:
        return dict(line.split(None, 1) for line in (raw.strip() for raw in config) if line and line[0] != "#")


def use_resolver(address: str) -> None:
    """Every lookup (dkimpy's, through txt_record, and pyspf's) asks ADDRESS."""
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [address]
    dns.resolver.default_resolver = resolver


def txt_record(name, timeout: float = DNS_TIMEOUT) -> bytes | None:
    """dkimpy's DNS lookup, telling a temporary failure (raised) from no record (None)."""
    import dns.exception
    import dns.resolver

    name = name.decode() if isinstance(name, bytes) else name
    try:
        answer = dns.resolver.resolve(name, "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except (dns.resolver.NoNameservers, dns.resolver.NoResolverConfiguration, dns.exception.Timeout) as error:
        raise TemporaryDnsError(str(error)) from None
    for record in answer:
        return b"".join(record.strings)
    return None


def dkim_results(message: bytes, dnsfunc=txt_record) -> list[str]:
    """One RFC 8601 result per DKIM-Signature, topmost first; ["dkim=none"] without one."""
    import dkim
    from dkim.util import parse_tag_value

    try:
        verifier = dkim.DKIM(message, timeout=DNS_TIMEOUT)
    except Exception as error:  # a message dkimpy cannot even parse
        return [f"dkim=permerror ({_comment(error)})"]
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    if not signatures:
        return ["dkim=none"]
    results, started = [], time.monotonic()
    for index, value in enumerate(signatures[:MAX_SIGNATURES]):
        try:
            tags = parse_tag_value(value)
        except Exception:
            tags = {}
        properties = " ".join(f"header.{tag}={_property(tags[tag.encode()])}"
                              for tag in ("d", "s", "a", "b") if tag.encode() in tags)
        unpublished: list[str] = []  # dkimpy reports a key missing from DNS as a mere False
        left = TIME_BUDGET - (time.monotonic() - started)

        def lookup(name, timeout=DNS_TIMEOUT, unpublished=unpublished, left=left):
            found = dnsfunc(name, timeout=max(0.1, min(timeout, left)))
            if found is None:
                unpublished.append(name.decode() if isinstance(name, bytes) else name)
            check_key(found)
            return found

        try:
            if left <= 0:
                raise TemporaryDnsError(f"time budget of {TIME_BUDGET:g} s spent")
            verified = verifier.verify(idx=index, dnsfunc=lookup)
            result, why = ("pass", "") if verified else ("fail", "")
            if not verified and unpublished:
                result, why = "permerror", f"no key at {unpublished[0].rstrip('.')}"
        except UnacceptableKey as error:
            result, why = "permerror", str(error)
        except TemporaryDnsError as error:
            result, why = "temperror", f"DNS: {error}"
        except dkim.ValidationError as error:  # dkimpy raises this on a body-hash mismatch
            result, why = "fail", str(error)
        except dkim.DKIMException as error:  # a bad key or signature
            result, why = "permerror", str(error)
        except Exception as error:
            result, why = "temperror", f"{type(error).__name__}: {error}"
        comment = f" ({_comment(why)})" if why else ""
        results.append(f"dkim={result}{comment}" + (f" {properties}" if properties else ""))
    if len(signatures) > MAX_SIGNATURES:
        results.append(f"dkim=policy ({len(signatures) - MAX_SIGNATURES} more signatures not verified)")
    return results


def spf_result(sender: str, address: str | None) -> str | None:
    """SPF of the envelope sender from the client's address; None: nothing to check (no sender)."""
    if not sender or "@" not in sender or not address:
        return None
    try:
        import spf

        result, _explanation = spf.check2(i=address, s=sender, h=sender.rpartition("@")[2], querytime=DNS_TIMEOUT * 2)
    except ImportError:
        return None
    except Exception as error:
        return f"spf=temperror ({_comment(error)}) smtp.mailfrom={mailfrom(sender)}"
    return f"spf={result} smtp.mailfrom={mailfrom(sender)}"


# What a property's value may hold bare (RFC 8601 pvalue: a token, or local-part@domain);
# anything else (";", "(", quotes, white space) is written as one quoted-string.
_BARE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~@-]+")


def _quoted(text: str) -> str:
    text = "".join(c for c in text if c.isprintable())
    if _BARE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mailfrom(sender: str) -> str:
    """The envelope sender as an smtp.mailfrom value: bare when it is a plain address, else quoted."""
    return _quoted(sender)


def _property(value: bytes) -> str:
    text = value.decode(errors="replace")
    text = re.sub(r"\s+", "", text)
    return _quoted(text[:8] if len(text) > 64 else text)  # header.b: its first 8 characters tell it


def _comment(text) -> str:
    return re.sub(r"[()\\\s]+", " ", str(text)).strip()[:120]


def header(authserv_id: str, results: list[str]) -> bytes:
    return (f"Authentication-Results: {authserv_id};\n\t" + ";\n\t".join(results) + "\n").encode()


def _skip_cfws(text: bytes, at: int) -> int:
    """The index past the comments (nested parentheses) and white space at AT."""
    depth = 0
    while at < len(text):
        c = text[at:at + 1]
        if c == b"\\" and depth:
            at += 2
            continue
        if c == b"(":
            depth += 1
        elif c == b")" and depth:
            depth -= 1
        elif not depth and c not in b" \t\r\n":
            break
        at += 1
    return at


def authserv_id_of(field: bytes) -> bytes | None:
    """The authserv-id of an Authentication-Results FIELD (its name any case, white space
    before the colon), unquoted, lower-cased, without a trailing dot; None: another field."""
    name = re.match(rb"([!-9;-~]+)[ \t]*:", field)
    if not name or name.group(1).lower() != b"authentication-results":
        return None
    value, at = field[name.end():], _skip_cfws(field[name.end():], 0)
    if value[at:at + 1] == b'"':
        end = re.match(rb'"((?:[^"\\]|\\.)*)"', value[at:])
        found = re.sub(rb"\\(.)", rb"\1", end.group(1)) if end else value[at + 1:]
    else:
        found = re.match(rb'[^\s;()"]*', value[at:]).group(0)
    return found.strip().rstrip(b".").lower()


def without_forged_results(message: bytes, authserv_id: str) -> bytes:
    """MESSAGE without Authentication-Results headers claiming to be this host's (RFC 8601 5),
    told by their parsed authserv-id, however it is spelt."""
    end = message.find(b"\n\n")
    head, body = (message, b"") if end < 0 else (message[: end + 1], message[end + 1:])
    fields = re.split(rb"\n(?![ \t])", head.rstrip(b"\n"))
    ours = authserv_id.encode().rstrip(b".").lower()
    kept = [field for field in fields if authserv_id_of(field) != ours]
    return b"\n".join(kept) + b"\n" + body if kept else body


def envelope_sender(envelope: bytes) -> str:
    """The sender in qmail-queue's envelope ("F<sender>\\0T<recipient>\\0...\\0")."""
    return envelope[1:].split(b"\0", 1)[0].decode(errors="replace") if envelope[:1] == b"F" else ""


def filter_memory(databytes_file: str = DATABYTES) -> int:
    """What the filter may use: a message of qmail's databytes held about five times over
    (plus the interpreter), and never less than FILTER_MEMORY."""
    try:
        with open(databytes_file) as limit:
            databytes = int(limit.read().split()[0])
    except (OSError, ValueError, IndexError):
        databytes = 0
    return max(FILTER_MEMORY, MEMORY_PER_MESSAGE_BYTE * databytes + 128_000_000)


def _own_memory_limit() -> None:
    """Raise the soft memory limits port 25 set for qmail-smtpd to filter_memory() (or the hard limit)."""
    memory = filter_memory()
    for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        soft, hard = resource.getrlimit(limit)
        wanted = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(limit, (wanted, hard))


def main() -> None:
    _own_memory_limit()
    try:
        config = read_config()
        queue = config["queue"]
    except Exception as error:
        print(f"qmailhost authres: {error}", file=sys.stderr)
        sys.exit(TEMPORARY_REFUSAL)
    message = sys.stdin.buffer.read()
    envelope = os.fdopen(1, "rb", closefd=False).read()
    try:
        if config.get("resolver"):
            use_resolver(config["resolver"])
        results = dkim_results(message)
        spf = spf_result(envelope_sender(envelope), os.environ.get("TCPREMOTEIP"))
        authserv_id = config["authserv-id"]
        message = header(authserv_id, results + ([spf] if spf else [])) + without_forged_results(message, authserv_id)
    except Exception as error:  # never lose mail to a verification problem
        message = header(config.get("authserv-id", "localhost"), [f"dkim=temperror ({_comment(error)})"]) + message
    try:
        for fd, data in ((0, message), (1, envelope)):
            with tempfile.TemporaryFile() as spool:
                spool.write(data)
                spool.flush()
                spool.seek(0)
                os.dup2(spool.fileno(), fd)
        os.execv(queue, [queue])
    except OSError as error:
        print(f"qmailhost authres: cannot run {queue}: {error}", file=sys.stderr)
        sys.exit(TEMPORARY_REFUSAL)


if __name__ == "__main__":
    main()
