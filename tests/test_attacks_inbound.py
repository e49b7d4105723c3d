"""Attacks on the inbound filter (files/dkim/authres.py) that a stranger mounts with one
message on port 25 (issue 24: H1, H2, M1), run here as qmail-smtpd runs it, under port
25's memory limit, with dnspython asking a test DNS server.

- H1: a message up to databytes is handed on whole under `softlimit -m 64000000` (the
  filter raises its own soft limit; it does not run out of memory and 451 forever);
- H2: a signature naming a huge key (16384-bit modulus and exponent) is refused as a
  permerror without the modular exponentiation; more than a few signatures are not all
  verified; the whole filter has a time budget, past which the results are temperror;
- M1: Authentication-Results headers forged in this host's name are removed whatever
  their spelling (a version, a comment, a trailing dot, a quoted id, a space before the
  colon), and an envelope sender cannot write into our header.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import resource
import subprocess
import sys

import pytest

dkim = pytest.importorskip("dkim", reason="dkimpy is not installed (the test extra installs it)")
resolver_module = pytest.importorskip("dns.resolver", reason="dnspython is not installed (the test extra)")
authres_parser = pytest.importorskip("authres", reason="authres (an RFC 8601 parser) is not installed (the test extra)")

from harness.dns_server import dnspython_asking  # noqa: E402
from qmailhost.files import path as file_path  # noqa: E402

FILTER = file_path("dkim/authres.py")
_spec = importlib.util.spec_from_file_location("authres", FILTER)
authres = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(authres)

ME = "mail.example.org"
MESSAGE = b"From: a@peer.example.net\nTo: alice@example.org\nSubject: hi\n\nbody\n"


@pytest.fixture()
def zone():
    records: dict = {}
    with dnspython_asking(lambda name, kind: records.get((name, kind), [])):
        yield records


# --- M1: forged results ----------------------------------------------------------------------

FORGED = [
    f"Authentication-Results: {ME}; dkim=pass header.d=bank.example",
    f"Authentication-Results: {ME} 1; dkim=pass header.d=bank.example",
    f"Authentication-Results: (from the bank) {ME}; dkim=pass",
    f"Authentication-Results: {ME}.; dkim=pass",
    f"Authentication-Results: \"{ME}\"; dkim=pass",
    f"Authentication-Results : {ME}; dkim=pass",
    f"authentication-results:{ME.upper()};dkim=pass",
    f"Authentication-Results:\n\t{ME};\n\tdkim=pass header.d=bank.example",
    f"Authentication-Results: {ME} (a comment) 1; dkim=pass",
]


@pytest.mark.parametrize("forged", FORGED)
def test_a_result_forged_in_this_hosts_name_is_removed_however_spelt(forged):
    kept = "Authentication-Results: other.example; spf=pass"
    message = f"{forged}\n{kept}\nSubject: hi\n\nbody\n".encode()
    assert authres.without_forged_results(message, ME) == f"{kept}\nSubject: hi\n\nbody\n".encode()


def test_a_result_for_another_host_that_starts_like_ours_is_kept():
    message = f"Authentication-Results: {ME}.evil.example; dkim=pass\n\nbody\n".encode()
    assert authres.without_forged_results(message, ME) == message


@pytest.mark.parametrize("sender", [
    "a@evil.example;dkim=pass(c)header.d=paypal.com",
    "\"x;dkim=pass\"@evil.example",
    "a(b)@evil.example",
])
def test_an_envelope_sender_cannot_write_into_our_header(zone, sender):
    result = authres.spf_result(sender, "192.0.2.7")
    header = authres.header(ME, ["dkim=none", result]).decode()
    # Our header, as a reader parses it (the authres package, by pyspf's and dkimpy's author),
    # holds exactly our two results: the sender's text is one quoted value.
    parsed = authres_parser.AuthenticationResultsHeader.parse(header)
    assert [r.method for r in parsed.results] == ["dkim", "spf"], header
    # (the parser leaves quoted-pairs as written: undo them, as RFC 5322 reads a quoted-string)
    assert [(p.name, re.sub(r"\\(.)", r"\1", p.value)) for p in parsed.results[1].properties] == \
        [("mailfrom", sender)], header
    assert "header.d=paypal.com" not in header.replace(authres.mailfrom(sender), "")


def test_the_filters_memory_follows_qmails_databytes(tmp_path):
    (tmp_path / "databytes").write_text("200000000\n")
    assert authres.filter_memory(str(tmp_path / "databytes")) >= 5 * 200_000_000
    assert authres.filter_memory(str(tmp_path / "absent")) == authres.FILTER_MEMORY


# --- H2: the work one message can cost -------------------------------------------------------

def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _integer(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return _der(0x02, raw)


def huge_key_record(bits: int = 16384) -> bytes:
    """A DKIM key record whose modulus and exponent are both BITS long (odd, not a real key:
    a verifier that computes with it spends seconds before it fails)."""
    modulus = (1 << (bits - 1)) | int.from_bytes(os.urandom(bits // 8), "big") | 1
    exponent = (1 << (bits - 1)) | int.from_bytes(os.urandom(bits // 8), "big") | 1
    rsa = _der(0x30, _integer(modulus) + _integer(exponent))
    algorithm = _der(0x30, _der(0x06, bytes.fromhex("2a864886f70d010101")) + b"\x05\x00")
    spki = _der(0x30, algorithm + _der(0x03, b"\x00" + rsa))
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("key") / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(path), "1024"], check=True, capture_output=True)
    return path.read_bytes()


def _signed(key: bytes, domain: str, selector: str, message: bytes = MESSAGE) -> bytes:
    """MESSAGE with a real signature (its body hash right, so a verifier goes on to the key)."""
    return dkim.sign(message, selector.encode(), domain.encode(), key, linesep=b"\n") + message


def test_a_signature_naming_a_huge_key_is_a_permerror_without_the_work(signing_key):
    record = huge_key_record()  # 4 KB of TXT: answered here as the resolver would over TCP
    [result] = authres.dkim_results(_signed(signing_key, "evil.example", "huge"),
                                    dnsfunc=lambda name, timeout=5: record)
    assert result.startswith("dkim=permerror") and "key" in result, result


def test_only_the_first_few_signatures_are_verified(zone, signing_key):
    message = MESSAGE
    for i in range(20):
        message = _signed(signing_key, "evil.example", f"s{i}", message)
    results = authres.dkim_results(message)
    verified = [r for r in results if not r.startswith("dkim=policy")]
    assert len(verified) == authres.MAX_SIGNATURES, results
    assert len(results) == authres.MAX_SIGNATURES + 1 and "not verified" in results[-1], results


def test_past_its_time_budget_the_results_are_temperror(zone, monkeypatch, signing_key):
    monkeypatch.setattr(authres, "TIME_BUDGET", 0.000001)
    [result] = authres.dkim_results(_signed(signing_key, "peer.example.net", "sel"))
    assert result.startswith("dkim=temperror") and "time" in result, result


# --- H1: a large message under port 25's memory limit --------------------------------------------

def test_a_message_of_databytes_passes_under_port_25s_memory_limit(tmp_path, zone):
    """The filter, run as qmail-smtpd runs it (softlimit -m 64000000, message on fd 0,
    envelope on fd 1), hands a 19 MB message on whole to a stand-in for qmail-queue."""
    received = tmp_path / "received"
    queue = tmp_path / "qmail-queue"
    queue.write_text(f"#!/bin/sh\ncat > {received}\n")
    queue.chmod(0o755)
    config = tmp_path / "inbound"
    config.write_text(f"authserv-id {ME}\nqueue {queue}\n")
    script = tmp_path / "authres.py"
    script.write_text(f"#!{sys.executable}\n" + FILTER.read_text())
    script.chmod(0o755)
    message = MESSAGE + (b"x" * 76 + b"\n") * (19_000_000 // 77)
    (tmp_path / "message").write_bytes(message)
    (tmp_path / "envelope").write_bytes(b"Fa@peer.example.net\0Talice@example.org\0\0")
    def port_25s_limits():  # what `softlimit -m 64000000` sets: the soft limits, the hard ones kept
        for limit in (resource.RLIMIT_DATA, resource.RLIMIT_STACK, resource.RLIMIT_MEMLOCK, resource.RLIMIT_AS):
            hard = resource.getrlimit(limit)[1]
            resource.setrlimit(limit, (64_000_000 if hard == resource.RLIM_INFINITY else min(64_000_000, hard), hard))

    with open(tmp_path / "message", "rb") as stdin, open(tmp_path / "envelope", "rb") as envelope:
        run = subprocess.run([str(script)], stdin=stdin, stdout=envelope, stderr=subprocess.PIPE,
                             preexec_fn=port_25s_limits, timeout=120)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    delivered = received.read_bytes()
    assert delivered.startswith(b"Authentication-Results: " + ME.encode())
    assert delivered.endswith(message)
