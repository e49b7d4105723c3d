"""The two programs tasks/dkim.py puts on the host (files/dkim/), run here as qmail would run them, and checked by
dkimpy's own verifier (the library a receiver's filter uses) and a resolver over UDP.

- sign.py in place of qmail-remote: signs for a signing domain and execs the real
  qmail-remote with the signed message; passes other senders' mail on unchanged; with its
  key gone it prints qmail-remote's temporary failure and never runs qmail-remote.
- authres.py's results, with dnspython asking a test DNS server: pass, fail (a changed
  body), none, permerror (no key published), temperror (the name server fails), SPF.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

dkim = pytest.importorskip("dkim", reason="dkimpy is not installed (the test extra installs it)")
resolver_module = pytest.importorskip("dns.resolver", reason="dnspython is not installed (the test extra)")

import importlib.util  # noqa: E402

from harness.dns_server import dnspython_asking  # noqa: E402
from qmailhost.files import path as file_path  # noqa: E402
from tasks.dns import txt_strings  # noqa: E402

SCRIPTS = file_path("dkim/sign.py").parent
_spec = importlib.util.spec_from_file_location("authres", file_path("dkim/authres.py"))
authres = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(authres)
DOMAIN, SELECTOR = "example.org", "mail"
# As qmail-send hands a submitted message to qmail-remote: qmail-queue's Received (ofmipd runs as
# a uid of its own), ofmipd's, then what the client wrote.
SUBMITTED = (b"Received: (qmail 4242 invoked by uid 998); 7 Dec 2026 07:00:00 -0000\n"
             b"Received: (ofmipd alice@127.0.0.1); 7 Dec 2026 07:00:00 -0000\n")
MESSAGE = SUBMITTED + (b"From: Alice <alice@example.org>\nTo: bob@peer.example.net\nSubject: caf\xc3\xa9 test\n"
           b"Date: Wed, 02 Dec 2026 12:00:00 +0000\nMessage-ID: <1@example.org>\n\n"
           b"line one\n.a line starting with a dot\n" + b"x" * 990 + b"\n8-bit: gr\xc3\xbc\xc3\x9fe\n")


def _new_key(directory: Path, name: str, ktype: str = "rsa") -> str:
    """A key made as the deploy makes it (dkimpy's dknewkey); returns its DNS value."""
    subprocess.run([sys.executable, "-m", "dkim.dknewkey", "--ktype", ktype, name], cwd=directory, check=True,
                   capture_output=True)
    return (directory / f"{name}.dns").read_text().strip()


@pytest.fixture()
def installed(tmp_path):
    """sign.py installed with a signing table and a qmail-remote that records what it got."""
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    public = {SELECTOR: _new_key(keys, SELECTOR), f"{SELECTOR}-ed25519": _new_key(keys, f"{SELECTOR}-ed25519",
                                                                                  "ed25519")}
    remote = tmp_path / "qmail-remote"
    remote.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat > {tmp_path}/sent\n"
                      "printf 'rdelivered\\0Kdone\\0'\n")
    remote.chmod(0o755)
    signer = tmp_path / "signer"
    signer.mkdir()
    shutil.copy(SCRIPTS / "sign.py", signer / "qmail-remote")
    (signer / "signing").write_text(
        f"remote\t{remote}\nsign\t{DOMAIN}\t{SELECTOR}\trsa\t{keys}/{SELECTOR}.key\n"
        f"sign\t{DOMAIN}\t{SELECTOR}-ed25519\ted25519\t{keys}/{SELECTOR}-ed25519.key\n")
    return tmp_path, signer / "qmail-remote", keys, public


def _send(signer: Path, sender: str, message: bytes = MESSAGE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(signer), "mx.peer.example.net", sender, "bob@peer.example.net"],
                          input=message, capture_output=True)


def _dns_of(public: dict):
    def lookup(name, timeout=5):
        selector = name.decode().split(".")[0]
        return public.get(selector, "").encode() or None

    return lookup


def test_mail_from_a_signing_domain_leaves_signed_twice_and_both_signatures_verify(installed):
    tmp, signer, _, public = installed
    result = _send(signer, f"alice@{DOMAIN}")
    assert result.returncode == 0 and result.stdout == b"rdelivered\0Kdone\0", result
    sent = (tmp / "sent").read_bytes()
    assert (tmp / "args").read_text().split() == ["mx.peer.example.net", f"alice@{DOMAIN}", "bob@peer.example.net"]
    assert sent.endswith(MESSAGE) and sent.count(b"DKIM-Signature:") == 2
    assert b"\r" not in sent  # qmail-remote adds the CRs itself
    verifier = dkim.DKIM(sent)
    assert verifier.verify(idx=0, dnsfunc=_dns_of(public)) and verifier.verify(idx=1, dnsfunc=_dns_of(public))
    # and in the form it travels in: CRLF lines, as the peer receives them
    assert dkim.verify(sent.replace(b"\n", b"\r\n"), dnsfunc=_dns_of(public))


ARRIVED = b"Received: (qmail 77 invoked from network); 7 Dec 2026 07:00:00 -0000\n"
FORWARDED_BY_ALIAS = b"Received: (qmail 78 invoked by alias); 7 Dec 2026 07:00:00 -0000\n"
FORWARDED_BY_USER = (b"Received: (qmail 79 invoked by uid 1001); 7 Dec 2026 07:00:00 -0000\n"
                     b"Delivered-To: alice@example.org\n")
MADE_HERE = b"Received: (qmail 80 invoked by uid 0); 7 Dec 2026 07:00:00 -0000\n"


@pytest.mark.parametrize("origin, signs", [(ARRIVED, False), (FORWARDED_BY_ALIAS, False), (FORWARDED_BY_USER, False),
                                           (b"", False), (MADE_HERE, True)],
                         ids=["port 25", "alias forward", "user forward", "no queue line", "made here"])
def test_only_mail_submitted_or_made_here_is_signed(installed, origin, signs):
    """Mail from port 25 (a stranger naming alice@ as sender) and mail forwarded from here keep
    what they came with: the host signs what its accounts submitted and what was made on it."""
    tmp, signer, _, _ = installed
    message = origin + MESSAGE[len(SUBMITTED):]
    result = _send(signer, f"alice@{DOMAIN}", message)
    assert result.stdout == b"rdelivered\0Kdone\0", result
    sent = (tmp / "sent").read_bytes()
    assert (b"DKIM-Signature:" in sent) is signs
    assert sent.endswith(message)


def test_a_changed_body_no_longer_verifies(installed):
    tmp, signer, _, public = installed
    _send(signer, f"alice@{DOMAIN}")
    sent = (tmp / "sent").read_bytes().replace(b"line one", b"line 1")
    with pytest.raises(dkim.ValidationError):  # dkimpy raises on a body-hash mismatch
        dkim.DKIM(sent).verify(dnsfunc=_dns_of(public))


def test_mail_from_other_senders_passes_unchanged(installed):
    tmp, signer, _, _ = installed
    for sender in ("carol@elsewhere.example", ""):  # a forward, a bounce
        assert _send(signer, sender).stdout == b"rdelivered\0Kdone\0"
        assert (tmp / "sent").read_bytes() == MESSAGE


def test_without_its_key_the_message_is_deferred_and_nothing_is_sent(installed):
    tmp, signer, keys, _ = installed
    (keys / f"{SELECTOR}.key").rename(keys / "elsewhere")
    result = _send(signer, f"alice@{DOMAIN}")
    assert result.returncode == 0  # any other exit code would make qmail-rspawn bounce the mail
    assert result.stdout.startswith(b"ZDKIM signing failed") and result.stdout.endswith(b"\0")
    assert result.stdout.count(b"\0") == 1
    assert not (tmp / "sent").exists()
    (keys / "elsewhere").rename(keys / f"{SELECTOR}.key")
    assert _send(signer, f"alice@{DOMAIN}").stdout == b"rdelivered\0Kdone\0"


def test_an_unreadable_key_defers_too(installed):
    if os.geteuid() == 0:
        key = installed[2] / f"{SELECTOR}.key"
        key.write_text("not a key")  # root reads anything: a damaged key stands in for an unreadable one
    else:
        (installed[2] / f"{SELECTOR}.key").chmod(stat.S_IWUSR)
    assert _send(installed[1], f"alice@{DOMAIN}").stdout.startswith(b"Z")


# --- inbound: authres.py's results, over real DNS -----------------------------------------------


@pytest.fixture()
def resolver():
    """dnspython asks a test DNS server (as the host's python3 asks the host's unbound)."""
    zone: dict = {}

    def answer(name, kind):
        if name.endswith("broken.example"):
            raise RuntimeError("SERVFAIL")
        return zone.get((name, kind), [])

    with dnspython_asking(answer):
        yield zone


def _signed_by(tmp_path: Path, domain: str, message: bytes = MESSAGE) -> tuple[bytes, str]:
    public = _new_key(tmp_path, "sel")
    key = (tmp_path / "sel.key").read_bytes()
    return dkim.sign(message, b"sel", domain.encode(), key, linesep=b"\n") + message, public


def test_inbound_results_pass_fail_none_permerror_temperror(tmp_path, resolver):
    signed, public = _signed_by(tmp_path, "peer.example.net")
    resolver[("sel._domainkey.peer.example.net", "TXT")] = [txt_strings(public)]  # split as printed
    [passed] = authres.dkim_results(signed)
    assert passed.startswith("dkim=pass ") and "header.d=peer.example.net" in passed and "header.s=sel" in passed
    [failed] = authres.dkim_results(signed.replace(b"line one", b"line 1"))
    assert failed.startswith("dkim=fail")
    assert authres.dkim_results(MESSAGE) == ["dkim=none"]
    unpublished, _ = _signed_by(tmp_path, "nokey.example.net")
    assert authres.dkim_results(unpublished)[0].startswith("dkim=permerror")
    broken, _ = _signed_by(tmp_path, "broken.example")
    assert authres.dkim_results(broken)[0].startswith("dkim=temperror")


def test_spf_of_the_envelope_sender(resolver):
    pytest.importorskip("spf", reason="pyspf is not installed (the test extra installs it)")
    resolver[("peer.example.net", "TXT")] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    assert authres.spf_result("carol@peer.example.net", "192.0.2.7").startswith("spf=pass ")
    assert authres.spf_result("carol@peer.example.net", "198.51.100.1").startswith("spf=fail ")
    assert authres.spf_result("", "192.0.2.7") is None  # a bounce: no sender to check


def test_a_forged_result_in_this_hosts_name_is_removed_and_others_kept():
    message = (b"Authentication-Results: mail.example.org; dkim=pass\n\theader.d=bank.example\n"
               b"Authentication-Results: other.example; spf=pass\nSubject: hi\n\nbody\n")
    cleaned = authres.without_forged_results(message, "mail.example.org")
    assert cleaned == b"Authentication-Results: other.example; spf=pass\nSubject: hi\n\nbody\n"
    assert authres.envelope_sender(b"Fcarol@peer.example.net\0Talice@example.org\0\0") == "carol@peer.example.net"
