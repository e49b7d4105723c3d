"""The DNS records (tasks/dns.py, each component's dns_records) and the checks that compare
DNS with them, against a small DNS server on loopback, with a host state as the probes
read it. The printed zone is parsed back by dnspython (a zone parser nobody here wrote):
every record, the DKIM key split into strings of at most 255 characters, and the same
records served make every check ok; each record changed or removed fails its own check
and no other; the settings that shape the records are validated once."""

from __future__ import annotations

import os
import socket
import time

import pytest

from harness.dns_server import DnsServer, zone_from_text
from qmailhost import checks
from qmailhost import dns_lookup as resolver_module
from qmailhost.platform import debian
from qmailhost.settings import Settings, SettingsError
from tasks import dns

HOSTNAME, DOMAIN, ADDRESS = "mail.qmailhost-verify.net", "qmailhost-verify.net", "192.0.2.25"
# A real RSA-2048 public key's DNS value (392 characters of base64): it needs two strings.
P = ("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzgPfHbtSPymPAm9QKNIAKy6kuV1H68vy1R8ope1ArNxmGE0TUpJIguUf92hcn+NF"
     "pjfeCIaUUN5WQRl38OgPPPg/L2F1DK6DgBshBW1+Yg51eFmU9S3j0kL1b7dduE3DKBJSprIKp6q0SFUQC61wPHZUkuShXJZWu9hKx324r5Fp"
     "Cg1IWPOheqakD7GMHr1kW3ITJQJKlXDQw+NO6xYrgvqdnGECsQeqv2So9kPCeAmbXVkNkaMpz5cl1niK6COCVQ55bwS+tHPfwykIyqlAjxcH"
     "ler81XiN2jVvjvjGTAuvm4nYjiV2xvYghKXuDvLmiYrnE7QtOMztbtnH+2On1QIDAQAB")
STATE = {"addresses": (ADDRESS,), "dkim_keys": {(DOMAIN, "mail"): f"v=DKIM1; k=rsa; p={P}"}}
DNS_CHECKS = tuple(c for c in dns.COMPONENT.checks)


def settings(**data) -> Settings:
    os.environ.setdefault("QMAILHOST_TEST_DNS_PASSWORD", "not-used-here")
    return Settings.from_host_data({"hostname": HOSTNAME, "accounts": [{"name": "alice",
                                    "password_env": "QMAILHOST_TEST_DNS_PASSWORD"}], **data})


def zone_of(text: str) -> dict:
    """The printed records as DnsServer serves them (dnspython's zone parser), each TXT string
    at most 255 characters, with the PTR of the host's address."""
    pytest.importorskip("dns.zone", reason="dnspython is not installed (the test extra installs it)")
    served = {(".", "NS"): ["a.root-servers.net"], **zone_from_text(text)}
    assert all(len(s) <= 255 for (_, kind), values in served.items() if kind == "TXT" for v in values for s in v)
    served[("25.2.0.192.in-addr.arpa", "PTR")] = [HOSTNAME]
    return served


def results(the_settings: Settings, zone: dict | None, state: dict = STATE, port: int | None = None) -> dict:
    target = checks.Target(the_settings, debian("13"), ADDRESS, shell=None)
    target.host_state = state
    server = DnsServer(zone) if zone is not None else None
    target.dns = resolver_module.Dns("127.0.0.1", port=server.port if server else port)
    try:
        return {r.name: (r.status, r.reason) for r in checks.run_checks(target, DNS_CHECKS)}
    finally:
        if server:
            server.close()


def printed(the_settings: Settings | None = None, state: dict = STATE) -> str:
    the_settings = the_settings or settings()
    return dns.zone_text(the_settings, dns.records(the_settings, state))


def test_the_printed_zone_holds_every_record_the_host_needs():
    zone = zone_of(printed())
    assert zone[(DOMAIN, "MX")] == [HOSTNAME]
    assert zone[(HOSTNAME, "A")] == [ADDRESS]
    assert zone[(DOMAIN, "TXT")] == [["v=spf1 mx -all"]] and zone[(HOSTNAME, "TXT")] == [["v=spf1 a -all"]]
    assert zone[(f"_dmarc.{DOMAIN}", "TXT")] == [["v=DMARC1; p=none"]]
    assert zone[(f"_smtp._tls.{DOMAIN}", "TXT")] == [[f"v=TLSRPTv1; rua=mailto:postmaster@{DOMAIN}"]]
    [key] = zone[(f"mail._domainkey.{DOMAIN}", "TXT")]
    assert len(key) == 2 and "".join(key) == f"v=DKIM1; k=rsa; p={P}"
    for service, port in (("submission", 587), ("submissions", 465), ("imaps", 993), ("imap", 143)):
        assert zone[(f"_{service}._tcp.{DOMAIN}", "SRV")] == [f"0 1 {port} {HOSTNAME}."]


def test_settings_shape_the_records():
    text = printed(settings(dmarc_policy="reject", dmarc_reports=f"dmarc@{DOMAIN}", submissions_port=None,
                            imap_port=None, public_addresses=["198.51.100.7", "2001:db8::25"], dkim_ed25519=True,
                            smtproutes={"": "smarthost.example.net"}))
    zone = zone_of(text)
    assert zone[(f"_dmarc.{DOMAIN}", "TXT")] == [[f"v=DMARC1; p=reject; rua=mailto:dmarc@{DOMAIN}"]]
    assert (f"_submissions._tcp.{DOMAIN}", "SRV") not in zone and (f"_imap._tcp.{DOMAIN}", "SRV") not in zone
    assert zone[(HOSTNAME, "A")] == ["198.51.100.7"] and zone[(HOSTNAME, "AAAA")] == ["2001:db8::25"]
    assert zone[(DOMAIN, "TXT")] == [["v=spf1 mx ~all"]] and "smarthost.example.net" in text
    assert "(no key on the host yet)" in text  # the ed25519 key is made by the next deploy
    assert printed(settings(dkim=False)).count("_domainkey") == 0


def test_a_private_address_is_printed_with_a_warning():
    text = printed(state={**STATE, "addresses": ("10.213.1.2",)})
    assert "10.213.1.2 is a private address: set public_addresses" in text


def test_the_printed_records_served_make_every_dns_check_ok():
    found = results(settings(), zone_of(printed()))
    assert {name: status for name, (status, _) in found.items()} == {c.__name__[6:]: "ok" for c in DNS_CHECKS}, found


@pytest.mark.parametrize("change, check, status", [
    ({(DOMAIN, "MX"): ["mx.elsewhere.example"]}, "dns_mx", "error"),
    ({(HOSTNAME, "A"): ["198.51.100.7"]}, "dns_address", "error"),
    ({("25.2.0.192.in-addr.arpa", "PTR"): ["dsl-192-0-2-25.isp.example"]}, "dns_ptr", "error"),
    ({(DOMAIN, "TXT"): ["google-site-verification=x"]}, "dns_spf", "warning"),
    ({(DOMAIN, "TXT"): ["v=spf1 a:other.example -all"]}, "dns_spf", "warning"),
    ({(f"mail._domainkey.{DOMAIN}", "TXT"): []}, "dns_dkim", "error"),
    ({(f"mail._domainkey.{DOMAIN}", "TXT"): [dns.txt_strings(f"v=DKIM1; k=rsa; p={P[:-8]}")]}, "dns_dkim", "error"),
    ({(f"_dmarc.{DOMAIN}", "TXT"): []}, "dns_dmarc", "warning"),
    ({(f"_dmarc.{DOMAIN}", "TXT"): ["v=DMARC1; p=reject"]}, "dns_dmarc", "warning"),
    ({(f"_smtp._tls.{DOMAIN}", "TXT"): []}, "dns_tlsrpt", "warning"),
    ({(f"_imaps._tcp.{DOMAIN}", "SRV"): [f"0 1 995 {HOSTNAME}"]}, "dns_srv", "warning"),
])
def test_each_record_changed_or_removed_fails_its_own_check_and_no_other(change, check, status):
    found = results(settings(), {**zone_of(printed()), **change})
    assert found[check][0] == status, found
    assert all(s == "ok" for name, (s, _) in found.items() if name != check), found
    named = ADDRESS if check == "dns_ptr" else next(iter(change))[0]
    assert named in found[check][1]  # the record is named


def test_a_dkim_record_with_other_tags_but_the_same_key_is_ok():
    zone = {**zone_of(printed()), (f"mail._domainkey.{DOMAIN}", "TXT"): [dns.txt_strings(f"v=DKIM1; h=sha256; k=rsa; p={P}")]}
    assert results(settings(), zone)["dns_dkim"][0] == "ok"


def test_a_rotation_publishes_and_checks_both_selectors():
    rotated = settings(dkim_selector="mail2", dkim_retired_selectors=["mail"])
    state = {**STATE, "dkim_keys": {**STATE["dkim_keys"], (DOMAIN, "mail2"): "v=DKIM1; k=rsa; p=AAAA"}}
    text = printed(rotated, state)
    assert "DKIM rsa key (signs)" in text and "retired: remove once mail signed with it is read" in text
    zone = zone_of(text)
    assert results(rotated, zone, state)["dns_dkim"][0] == "ok"
    del zone[(f"mail._domainkey.{DOMAIN}", "TXT")]
    assert results(rotated, zone, state)["dns_dkim"][0] == "error"


def test_an_address_missing_from_dns_is_named():
    found = results(settings(), {**zone_of(printed()), (HOSTNAME, "A"): []})
    assert found["dns_address"][0] == "error" and f"{HOSTNAME} A {ADDRESS} missing" in found["dns_address"][1]
    assert found["dns_ptr"][0] == "ok"  # PTR is asked of the host's own addresses
    assert results(settings(), zone_of(printed()), state={**STATE, "addresses": ()})["dns_ptr"][0] == "skipped"


def test_reserved_names_are_skipped_unless_a_resolver_is_named():
    reserved = {"hostname": "mail.sandbox.test"}
    assert results(settings(**reserved), {})["dns_mx"] == ("skipped", "no DNS for mail.sandbox.test: .test is "
                                                           "reserved, never public (dns_server names a resolver "
                                                           "that serves it)")
    named = settings(**reserved, dns_server="127.0.0.1@5353")
    assert named.dns_server == ("127.0.0.1", 5353)
    found = results(named, {(".", "NS"): ["a.root-servers.net"]})
    assert found["dns_mx"][0] == "error"  # asked, and nothing is published


def test_without_dns_the_dns_checks_are_skipped_quickly_and_say_so():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    started = time.monotonic()
    try:
        found = results(settings(), None, port=silent.getsockname()[1])
    finally:
        silent.close()
    assert time.monotonic() - started < resolver_module.DNS_TIMEOUT + 1.5
    for status, reason in found.values():
        assert status == "skipped" and reason.startswith("no DNS: the resolver 127.0.0.1 did not answer"), reason


@pytest.mark.parametrize("data, setting", [
    ({"dmarc_policy": "strict"}, "dmarc_policy"),
    ({"dmarc_reports": "not an address"}, "dmarc_reports"),
    ({"tls_reports": "a@b"}, "tls_reports"),
    ({"public_addresses": ["mail.example.org"]}, "public_addresses"),
    ({"public_addresses": []}, "public_addresses"),
    ({"dns_server": "resolver.example"}, "dns_server"),
    ({"dkim_selector": "Mail_1"}, "dkim_selector"),
    ({"dkim_selector": "mail-ed25519"}, "dkim_selector"),
    ({"dkim_retired_selectors": "mail"}, "dkim_retired_selectors"),
    ({"dkim_retired_selectors": ["mail"]}, "dkim_retired_selectors"),
    ({"dkim": "yes"}, "dkim"),
])
def test_bad_record_settings_are_refused_in_one_line_naming_the_setting(data, setting):
    with pytest.raises(SettingsError) as refused:
        settings(**data)
    assert refused.value.setting == setting and "\n" not in str(refused.value)


def test_the_addresses_probe_keeps_only_global_addresses():
    lines = [["127.0.0.1"], ["::1"], ["fe80::1"], ["192.0.2.25"], ["2001:db8::25"], ["192.0.2.25"], ["garbage"]]
    assert dns.COMPONENT.probes[0].parse(lines) == ("192.0.2.25", "2001:db8::25")
