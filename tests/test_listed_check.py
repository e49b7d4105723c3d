"""The listed check (tasks/spamdyke.py) over a fake host: the answers dig would print through the
host's resolver, and the host's address listing, keyed by the command sent.

A listing (127.0.0.0/24 for addresses, 127.0.1.0/24 for Spamhaus DBL) is an error naming the
list, the address or domain and the code; a refusal (127.255.255.0/24) is a warning and never a
listing; a host behind NAT (private addresses) still has its domains checked; names under
reserved domains are never asked about.
"""

from __future__ import annotations

import re

import pytest

from harness.netbsd_host import IFCONFIG
from qmailhost import checks
from qmailhost.platform import debian, netbsd
from qmailhost.settings import Settings, SettingsError
from tasks import dns, resolver, spamdyke

DEBIAN = debian("13")
PUBLIC = "65.108.1.25"  # a global unicast address (no network is asked: dig is faked)
DATA = {"hostname": "mail.owner-mail.org", "domains": ["owner-mail.org", "second-domain.net"],
        "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}]}


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


class FakeHost:
    """What the host answers: its address listing (as `hostname -I` words or ifconfig lines) and,
    per name asked, what dig prints (nothing: no such name, not listed)."""

    def __init__(self, addresses: str, answers: dict[str, str] | None = None, platform=DEBIAN):
        self.addresses, self.answers, self.platform = addresses, answers or {}, platform
        self.asked: list[str] = []
        self.sent: list[str] = []

    def shell(self, command: str) -> tuple[bool, str]:
        self.sent.append(command)
        if command == f"{{ {dns.ADDRESS_LISTING[self.platform.name]}; }} 2>/dev/null":
            return True, self.addresses
        name = re.fullmatch(r"dig @127\.0\.0\.1 \+short \+time=3 \+tries=2 A (\S+)", command)
        assert name and command == resolver.query_command(self.platform, name[1]), command
        self.asked.append(name[1])
        return True, self.answers.get(name[1], "")


def check(host: FakeHost, **data) -> tuple[str, str]:
    settings = Settings.from_host_data({**DATA, **data}, inventory_name=DATA["hostname"])
    status, reason = spamdyke.check_listed(checks.Target(settings, host.platform, "192.0.2.1", host.shell))
    assert "\n" not in reason
    return status, reason


def debian_listing(*addresses: str) -> str:
    """What tasks/dns.py's Debian listing prints: one "inet ADDRESS" per word of `hostname -I`."""
    return "".join(f"inet {address}\n" for address in addresses)


def test_nothing_listed_is_ok_naming_what_was_asked_where():
    host = FakeHost(debian_listing(PUBLIC, "10.0.3.15", "2a01:4f9::25"))
    assert check(host) == (checks.OK, f"{PUBLIC} not on zen.spamhaus.org; "
                                      "owner-mail.org, second-domain.net not on dbl.spamhaus.org")
    assert host.asked == ["25.1.108.65.zen.spamhaus.org", "owner-mail.org.dbl.spamhaus.org",
                          "second-domain.net.dbl.spamhaus.org"]


def test_a_listed_address_is_an_error_naming_the_list_the_address_and_the_code():
    host = FakeHost(debian_listing(PUBLIC), {"25.1.108.65.zen.spamhaus.org": "127.0.0.4\n127.0.0.11\n"})
    assert check(host) == (checks.ERROR, f"listed: {PUBLIC} on zen.spamhaus.org (127.0.0.4)")


def test_a_listed_domain_is_an_error_naming_the_list_the_domain_and_the_code():
    host = FakeHost(debian_listing(PUBLIC), {"second-domain.net.dbl.spamhaus.org": "127.0.1.2\n"})
    assert check(host) == (checks.ERROR, "listed: second-domain.net on dbl.spamhaus.org (127.0.1.2)")


def test_a_refusal_is_no_listing_but_a_warning_and_the_list_is_asked_no_more():
    """Spamhaus answers 127.255.255.254 to a public or shared resolver: the listings are unknown."""
    host = FakeHost(debian_listing(PUBLIC), {"owner-mail.org.dbl.spamhaus.org": "127.255.255.254\n"})
    assert check(host) == (checks.WARNING,
                           "dbl.spamhaus.org refuses this resolver (127.255.255.254): its listings are unknown")
    assert "second-domain.net.dbl.spamhaus.org" not in host.asked


def test_a_listing_and_a_refusal_together_are_an_error_saying_both():
    host = FakeHost(debian_listing(PUBLIC), {"25.1.108.65.zen.spamhaus.org": "127.255.255.252\n",
                                             "owner-mail.org.dbl.spamhaus.org": "127.0.1.102\n"})
    assert check(host) == (checks.ERROR, "listed: owner-mail.org on dbl.spamhaus.org (127.0.1.102); "
                                         "zen.spamhaus.org refuses this resolver (127.255.255.252): its listings "
                                         "are unknown")


def test_an_answer_outside_the_listing_codes_is_a_warning_not_a_listing():
    host = FakeHost(debian_listing(PUBLIC), {"owner-mail.org.dbl.spamhaus.org": "198.51.100.7\n"})
    assert check(host) == (checks.WARNING, "dbl.spamhaus.org answered 198.51.100.7 for owner-mail.org, "
                                           "not a listing code")


def test_private_addresses_are_not_asked_about_but_the_domains_still_are():
    """A host behind NAT (and the test sandboxes, on 10.x) has no address of its own to look up."""
    host = FakeHost(debian_listing("10.0.3.15", "fd00::15"))
    assert check(host) == (checks.OK, "owner-mail.org, second-domain.net not on dbl.spamhaus.org; no public "
                                      "address: the host's addresses (10.0.3.15) are private (behind NAT?); "
                                      "public_addresses names the one the Internet sees")
    assert all(name.endswith(".dbl.spamhaus.org") for name in host.asked)


def test_public_addresses_name_what_is_asked_about_and_the_host_is_not_asked_its_own():
    host = FakeHost("", {"25.1.108.65.zen.spamhaus.org": "127.0.0.3\n"})
    assert check(host, public_addresses=[PUBLIC, "2a01:4f9::25"]) == (
        checks.ERROR, f"listed: {PUBLIC} on zen.spamhaus.org (127.0.0.3)")
    assert not any("hostname -I" in command for command in host.sent)


def test_with_nothing_to_ask_about_it_is_skipped_saying_why_and_asks_nothing():
    """The sandbox: no dns_blacklists, a domain under .test."""
    host = FakeHost(debian_listing("10.0.3.15"))
    data = {"hostname": "mail.sandbox.test", "domains": ["sandbox.test"],
            "spamdyke_filters": {"dns_blacklists": []}}
    assert check(host, **data) == (checks.SKIPPED, "no dns_blacklists in spamdyke_filters; no public domain "
                                                   "(sandbox.test: reserved, never public)")
    assert host.sent == []


def test_no_domain_blocklists_checks_the_addresses_only():
    host = FakeHost(debian_listing(PUBLIC))
    assert check(host, domain_blocklists=[]) == (checks.OK, f"{PUBLIC} not on zen.spamhaus.org; "
                                                            "no domain_blocklists")


def test_the_hostname_s_own_domain_is_asked_about_too():
    settings = Settings.from_host_data({**DATA, "hostname": "mx.provider-host.net", "domains": ["owner-mail.org"]},
                                       inventory_name="mx.provider-host.net")
    assert spamdyke.own_domains(settings) == ["owner-mail.org", "provider-host.net"]


def test_on_netbsd_the_host_s_addresses_come_from_ifconfig():
    assert spamdyke.interface_addresses(IFCONFIG) == ["fe80::5054:ff:fe12:3456", "192.0.2.25", "2001:db8::25",
                                                      "::1", "fe80::1", "127.0.0.1"]
    host = FakeHost(IFCONFIG.replace("192.0.2.25", PUBLIC), platform=netbsd("10"))
    assert check(host)[0] == checks.OK
    assert host.sent[0] == "{ ifconfig -a; } 2>/dev/null"
    assert host.asked[0] == "25.1.108.65.zen.spamhaus.org"


def test_domain_blocklists_defaults_to_spamhaus_dbl_and_refuses_what_is_no_list_of_zones():
    assert Settings.from_host_data(DATA, inventory_name=DATA["hostname"]).domain_blocklists == ["dbl.spamhaus.org"]
    for bad in ("dbl.spamhaus.org", ["not a zone!"], [7]):
        with pytest.raises(SettingsError) as refused:
            Settings.from_host_data({**DATA, "domain_blocklists": bad}, inventory_name=DATA["hostname"])
        assert refused.value.setting == "domain_blocklists"
        assert "\n" not in str(refused.value) and "[\"dbl.spamhaus.org\"], or [] for none" in str(refused.value)
