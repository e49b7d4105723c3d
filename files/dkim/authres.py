"""qmailhost (dkim/): the inbound filter in front of qmail-queue on port 25 (QMAILQUEUE).

Installed with the platform's python3 on its first line; qmail-smtpd runs it as qmaild
with the message on fd 0 and the envelope on fd 1, as it would run qmail-queue. It
prepends one ``Authentication-Results:`` header (RFC 8601) naming this host: the result of
each DKIM signature (pass, fail, permerror, temperror; none without one) and SPF of the
envelope sender from the client's address (TCPREMOTEIP), removes any such header a sender
forged in this host's name, then hands message and envelope to the real qmail-queue.
Mail is never lost to a verification problem: a DNS failure is a temperror in the header.
Only when qmail-queue cannot be run does it exit 71 (a temporary refusal, 451).
Standard library, python3-dkim (dkimpy, with dnspython) and python3-spf (pyspf) only.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inbound")
DNS_TIMEOUT = 5  # seconds per lookup
TEMPORARY_REFUSAL = 71  # qmail-queue's "temporarily refused" exit code


class TemporaryDnsError(Exception):
    pass


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
    results = []
    for index, value in enumerate(signatures):
        try:
            tags = parse_tag_value(value)
        except Exception:
            tags = {}
        properties = " ".join(f"header.{tag}={_property(tags[tag.encode()])}"
                              for tag in ("d", "s", "a", "b") if tag.encode() in tags)
        unpublished: list[str] = []  # dkimpy reports a key missing from DNS as a mere False

        def lookup(name, timeout=DNS_TIMEOUT, unpublished=unpublished):
            found = dnsfunc(name, timeout=timeout)
            if found is None:
                unpublished.append(name.decode() if isinstance(name, bytes) else name)
            return found

        try:
            verified = verifier.verify(idx=index, dnsfunc=lookup)
            result, why = ("pass", "") if verified else ("fail", "")
            if not verified and unpublished:
                result, why = "permerror", f"no key at {unpublished[0].rstrip('.')}"
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
        return f"spf=temperror ({_comment(error)}) smtp.mailfrom={_property(sender.encode())}"
    return f"spf={result} smtp.mailfrom={_property(sender.encode())}"


def _property(value: bytes) -> str:
    text = value.decode(errors="replace")
    text = re.sub(r"\s+", "", text)
    return text[:8] if len(text) > 64 else text  # header.b: its first 8 characters are enough to tell it


def _comment(text) -> str:
    return re.sub(r"[()\\\s]+", " ", str(text)).strip()[:120]


def header(authserv_id: str, results: list[str]) -> bytes:
    return (f"Authentication-Results: {authserv_id};\n\t" + ";\n\t".join(results) + "\n").encode()


def without_forged_results(message: bytes, authserv_id: str) -> bytes:
    """MESSAGE without Authentication-Results headers claiming to be this host's (RFC 8601 5)."""
    end = message.find(b"\n\n")
    head, body = (message, b"") if end < 0 else (message[: end + 1], message[end + 1:])
    fields = re.split(rb"\n(?![ \t])", head.rstrip(b"\n"))
    pattern = re.compile(rb"authentication-results:\s*" + re.escape(authserv_id.encode()) + rb"\s*(;|$)", re.I)
    kept = [field for field in fields if not pattern.match(field)]
    return b"\n".join(kept) + b"\n" + body if kept else body


def envelope_sender(envelope: bytes) -> str:
    """The sender in qmail-queue's envelope ("F<sender>\\0T<recipient>\\0...\\0")."""
    return envelope[1:].split(b"\0", 1)[0].decode(errors="replace") if envelope[:1] == b"F" else ""


def main() -> None:
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
