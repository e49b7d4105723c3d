"""qmailhost (dkim/): the inbound filter in front of qmail-queue on port 25 (QMAILQUEUE).

Installed with the platform's python3 on its first line; qmail-smtpd runs it as qmaild
with the message on fd 0 and the envelope on fd 1, as it would run qmail-queue. One
program does both of the filter's jobs, so a message costs one Python start, each job
turned on by a line of its config (written by the deploy):

- ``rspamd URL`` (spam/: spam_filter): the message, as received, is posted to rspamd's
  /checkv2 with its envelope (headers IP: TCPREMOTEIP; Helo: the name the client gave, read
  from the Received line qmail-smtpd wrote first, since neither qmail-smtpd nor spamdyke
  exports it; From: the envelope sender, "<>" for a bounce; one Rcpt: per recipient;
  Queue-Id). The verdict "reject" (or "discard": refused, never dropped in silence) exits
  31, which qmail-smtpd answers with 554 (notqmail's qmail-smtpd has no way to say more:
  its text is "mail server permanently rejected message (#5.3.0)"); "soft reject" exits 71
  (451 "mail server temporarily rejected message (#4.3.0)"). Any other verdict queues the message
  with rspamd's own headers (X-Spam-Status, X-Spamd-Bar; folded values in LF), or an
  X-Spam-Status of ours from its action and score when rspamd gave none. rspamd not
  answering within RSPAMD_SECONDS (the whole exchange: alarm-bounded), refusing, failing
  or answering something else: the message is queued with ``X-Spam-Status: Unknown
  (rspamd did not answer: REASON)``, never lost. Such headers a sender wrote themselves
  (X-Spam-Status, X-Spamd-Bar, X-Spam, and whatever rspamd adds) are removed first, so a
  forged "No" never survives. Asked first, so a refused message costs no DKIM or SPF
  lookups, and with the bytes as received (sent from memory, not copied).
- ``authserv-id NAME`` (authentication_results): it prepends one ``Authentication-Results:``
  header (RFC 8601) naming this host: the result of each DKIM signature (pass, fail,
  permerror, temperror; none without one) and SPF of the envelope sender from the client's
  address (TCPREMOTEIP), and removes any such header a sender forged in this host's name.

Then it hands message and envelope to the real qmail-queue. Mail is never lost to a
verification problem: a DNS failure is a temperror in the header. Only when qmail-queue
cannot be run does it exit 71 (a temporary refusal, 451).

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
rspamd's answer is read up to MAX_REPLY bytes. Standard library (the spam verdict: http.client
only), python3-dkim (dkimpy, with dnspython) and python3-spf (pyspf) only, the latter two
imported only when Authentication-Results are on.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import signal
import sys
import tempfile
import time
import urllib.parse

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inbound")
DNS_TIMEOUT = 5  # seconds per lookup
TEMPORARY_REFUSAL = 71  # qmail-queue's "temporarily refused" exit code (qmail-smtpd: 451)
PERMANENT_REFUSAL = 31  # qmail-queue's "permanently refused" exit code (qmail-smtpd: 554)
RSPAMD_SECONDS = 20.0  # the longest the whole exchange with rspamd may take (config: rspamd-seconds)
MAX_REPLY = 2_000_000  # bytes of rspamd's answer read at most (a few kB in practice)
# Headers that speak for this host's spam verdict: a sender's own are removed before ours are added.
SPAM_HEADERS = ("x-spam-status", "x-spamd-bar", "x-spam")
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
    """{"queue": the real qmail-queue; "authserv-id": this host's name (Authentication-Results
    on), "resolver": the host's own resolver (resolver/: unbound on 127.0.0.1), which DKIM and
    SPF lookups ask; "rspamd": the URL of rspamd's /checkv2 (spam_filter on), "rspamd-seconds":
    how long it may take}."""
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


def without_fields(message: bytes, unwanted) -> bytes:
    """MESSAGE without the header fields (each with its folded lines) for which UNWANTED(field) is true."""
    end = message.find(b"\n\n")
    head, body = (message, b"") if end < 0 else (message[: end + 1], message[end + 1:])
    fields = re.split(rb"\n(?![ \t])", head.rstrip(b"\n"))
    kept = [field for field in fields if not unwanted(field)]
    if len(kept) == len(fields):
        return message
    return b"\n".join(kept) + b"\n" + body if kept else body


def without_forged_results(message: bytes, authserv_id: str) -> bytes:
    """MESSAGE without Authentication-Results headers claiming to be this host's (RFC 8601 5),
    told by their parsed authserv-id, however it is spelt."""
    ours = authserv_id.encode().rstrip(b".").lower()
    return without_fields(message, lambda field: authserv_id_of(field) == ours)


def field_name(field: bytes) -> bytes | None:
    """A header FIELD's name, lower-cased (white space before the colon allowed); None: not a field."""
    name = re.match(rb"([!-9;-~]+)[ \t]*:", field)
    return name.group(1).lower() if name else None


def spam_fields(names=()):
    """A test for header fields that speak for a spam verdict: SPAM_HEADERS and NAMES (bytes), any case."""
    unwanted = {*(n.encode() for n in SPAM_HEADERS), *(n.lower() for n in names)}
    return lambda field: field_name(field) in unwanted


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


# --- the spam verdict (spam/: rspamd's /checkv2) --------------------------------------------------


class NoVerdict(Exception):
    """rspamd gave no verdict to act on: the message is queued, marked Unknown with this reason."""


def _alarm(_signal, _frame):
    raise TimeoutError("alarm")


def envelope_recipients(envelope: bytes) -> list[bytes]:
    """The recipients in qmail-queue's envelope (each "T<recipient>\\0"), as bytes."""
    return [item[1:] for item in envelope.split(b"\0")[1:] if item[:1] == b"T"]


def client_helo(message: bytes) -> bytes | None:
    """The name the client gave in HELO or EHLO, from the Received line qmail-smtpd writes first
    ("Received: from HOST (HELO NAME) (IP)"; without "(HELO ...)" the name was HOST itself, and
    none is known when HOST is "unknown")."""
    found = re.match(rb"Received: from (\S+)(?: \(HELO ([^()\s]+)\))? \(", message[:1024])
    if not found:
        return None
    if found.group(2):
        return found.group(2)
    return None if found.group(1) == b"unknown" else found.group(1)


def _printable(value: bytes) -> bytes:
    """VALUE as an HTTP header value: without control characters."""
    return re.sub(rb"[\x00-\x1f\x7f]", b"", value)


def request_headers(message: bytes, envelope: bytes, environ) -> list[tuple[str, bytes]]:
    """What rspamd is told beside the message: the client (IP, Hostname when tcpserver looked it
    up, Helo), the envelope (From, "<>" for a bounce; one Rcpt each), a Queue-Id for its log."""
    sender = envelope[1:].split(b"\0", 1)[0] if envelope[:1] == b"F" else b""
    headers = [("IP", environ.get("TCPREMOTEIP", "").encode()), ("From", sender or b"<>")]  # <>: a bounce
    headers += [("Rcpt", recipient) for recipient in envelope_recipients(envelope)]
    if environ.get("TCPREMOTEHOST"):
        headers.append(("Hostname", environ["TCPREMOTEHOST"].encode()))
    helo = client_helo(message)
    if helo:
        headers.append(("Helo", helo))
    headers.append(("Queue-Id", f"qh{int(time.time())}.{os.getpid()}".encode()))
    return [(name, _printable(value)) for name, value in headers if _printable(value)]


def _reason(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, http.client.RemoteDisconnected):
        return "it closed the connection"
    return _comment(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)


def ask_rspamd(url: str, message: bytes, headers: list[tuple[str, bytes]], seconds: float) -> dict:
    """rspamd's answer (/checkv2 at URL) for MESSAGE, sent from memory as it is (not copied); the
    whole exchange, however slowly the other side answers, is cut off after SECONDS. NoVerdict
    when there is no answer to act on."""
    parts = urllib.parse.urlsplit(url)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=seconds)
    try:
        connection.putrequest("POST", parts.path or "/", skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(message)))
        connection.endheaders(memoryview(message))
        response = connection.getresponse()
        body = response.read(MAX_REPLY + 1)
    except TimeoutError:
        raise NoVerdict(f"no answer within {seconds:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise NoVerdict(_reason(error)) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        connection.close()
    if response.status != 200:
        raise NoVerdict(_comment(f"HTTP {response.status} {response.reason}"))
    if len(body) > MAX_REPLY:
        raise NoVerdict(f"an answer over {MAX_REPLY} bytes")
    try:
        answer = json.loads(body)
    except ValueError:
        raise NoVerdict("an answer that is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("action"), str):
        raise NoVerdict("an answer without an action")
    return answer


def _field(name: str, value: str) -> bytes:
    """One header field NAME: VALUE, rspamd's CRLF folding made LF (every continuation line
    starts with white space; empty lines dropped)."""
    lines = [line for line in value.replace("\r\n", "\n").replace("\r", "\n").split("\n") if line.strip()]
    folded = "\n".join([lines[0] if lines else ""] + [line if line[:1] in " \t" else "\t" + line for line in lines[1:]])
    return f"{name}: {folded}\n".encode(errors="replace")


def _score(answer: dict) -> float:
    score = answer.get("score")
    return float(score) if isinstance(score, int | float) and not isinstance(score, bool) else 0.0


def verdict_headers(answer: dict) -> tuple[list[bytes], set[str]]:
    """The header fields rspamd's ANSWER adds (milter.add_headers), with an X-Spam-Status of ours
    from its action and score when it gave none; and the names of all of them (lower case)."""
    added = (answer.get("milter") or {}).get("add_headers") if isinstance(answer.get("milter"), dict) else None
    fields, names = [], set()
    for name, entries in (added.items() if isinstance(added, dict) else ()):
        if not isinstance(name, str) or not re.fullmatch(r"[!-9;-~]+", name):
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            value = entry.get("value") if isinstance(entry, dict) else entry
            if isinstance(value, str):
                fields.append(_field(name, value))
                names.add(name.lower())
    if "x-spam-status" not in names:
        spam = "No" if answer["action"] in ("no action", "greylist") else "Yes"
        fields.insert(0, _field("X-Spam-Status", f"{spam}, score={_score(answer):.2f}"))
        names.add("x-spam-status")
    return fields, names


def spam_verdict(config: dict[str, str], message: bytes, envelope: bytes, environ) -> list[bytes]:
    """Ask rspamd about MESSAGE; exit with qmail-queue's refusal when it refuses it, else the
    header fields to add. Nothing but a refusal keeps the message from the queue."""
    headers = request_headers(message, envelope, environ)
    said = dict(headers)
    who = f"{said.get('Queue-Id', b'').decode()} from {environ.get('TCPREMOTEIP', 'an unknown address')}"
    try:
        seconds = float(config.get("rspamd-seconds", RSPAMD_SECONDS))
        answer = ask_rspamd(config["rspamd"], message, headers, seconds)
    except (NoVerdict, ValueError) as error:
        print(f"qmailhost filter: {who}: rspamd did not answer ({error}); queued unjudged", file=sys.stderr)
        return [_field("X-Spam-Status", f"Unknown (rspamd did not answer: {error})")]
    action, score = answer["action"], _score(answer)
    if action in ("reject", "discard"):
        print(f"qmailhost filter: {who}: rspamd {action}, score {score:.2f}: refused (554)", file=sys.stderr)
        sys.exit(PERMANENT_REFUSAL)
    if action == "soft reject":
        print(f"qmailhost filter: {who}: rspamd soft reject, score {score:.2f}: refused for now (451)",
              file=sys.stderr)
        sys.exit(TEMPORARY_REFUSAL)
    print(f"qmailhost filter: {who}: rspamd {action}, score {score:.2f}", file=sys.stderr)
    return verdict_headers(answer)[0]


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
    added: list[bytes] = []  # the header fields prepended, in order
    unwanted = []  # what a sender's own header fields may not be
    if config.get("rspamd"):  # first: a refused message costs no DKIM or SPF lookups
        try:
            added += spam_verdict(config, message, envelope, os.environ)
        except Exception as error:  # never lose mail to a problem of ours
            added.append(_field("X-Spam-Status", f"Unknown (the filter failed: {_comment(error)})"))
        unwanted.append(spam_fields(field_name(field) for field in added))  # a sender's own go
    if config.get("authserv-id"):
        authserv_id = config["authserv-id"]
        try:
            if config.get("resolver"):
                use_resolver(config["resolver"])
            results = dkim_results(message)
            spf = spf_result(envelope_sender(envelope), os.environ.get("TCPREMOTEIP"))
            added.append(header(authserv_id, results + ([spf] if spf else [])))
        except Exception as error:  # never lose mail to a verification problem
            added.append(header(authserv_id, [f"dkim=temperror ({_comment(error)})"]))
        ours = authserv_id.encode().rstrip(b".").lower()
        unwanted.append(lambda field: authserv_id_of(field) == ours)
    try:
        message = b"".join(added) + without_fields(message, lambda field: any(test(field) for test in unwanted))
    except Exception:
        message = b"".join(added) + message
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
