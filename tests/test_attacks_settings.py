"""Bad settings, as a careless or hostile inventory would give them (issue 24: M5, M7, Low).

Every case must stop the run with one SettingsError naming the setting, before any
operation (Settings.from_host_data runs before deploy.py adds one).

- M5: a trailing newline in any string a setting holds (one case per string in a
  complete, valid inventory) would land in control files and run scripts;
- M7: a key that is neither ours nor pyinfra's is named in one warning; a key that is one
  of our settings spelt another way is refused;
- Low: names that would fail halfway through the deploy, or reach a root shell unquoted.
"""

from __future__ import annotations

import copy
import logging
import re
import subprocess

import pytest

from qmailhost.settings import Settings, SettingsError


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


def valid(tmp_path) -> dict:
    """An inventory that sets every setting holding a string, each to a valid value."""
    ca = tmp_path / "ca.pem"
    if not ca.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=test CA", "-days", "2", "-keyout", "/dev/null", "-out", str(ca)],
                       check=True, capture_output=True)
    return {
        "hostname": "mail.example.org",
        "domains": ["example.org", "example.net"],
        "accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}],
        "verify_account": "alice",
        "acme_directory": "letsencrypt",
        "acme_contact": "ops@example.org",
        "dkim_selector": "mail",
        "dkim_retired_selectors": ["old"],
        "public_addresses": ["192.0.2.1"],
        "dmarc_policy": "none",
        "dmarc_reports": "dmarc@example.org",
        "tls_reports": "tlsrpt@example.org",
        "dns_server": "192.0.2.53",
        "aliases": {"info": "alice"},
        "virtualdomains": {"example.com": "alice"},
        "smtproutes": {"example.com": "relay.example.net"},
        "tlshosts": {"mx.example.net": str(ca)},
        "notlshosts": ["mx.example.com"],
        "dns_forwarders": ["192.0.2.53"],
        "spamdyke_filters": {"dns_blacklists": ["zen.spamhaus.org"]},
        "submission": "ofmipd",
        "tls_policy": "intermediate",
    }


def _string_paths(value, path=()):
    """Every place in VALUE that holds a string: (path of keys and indexes, "value" or "key")."""
    if isinstance(value, str):
        yield path, "value"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key), "key"
            yield from _string_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _string_paths(item, (*path, index))


def _with_newline(data: dict, path: tuple, where: str) -> dict:
    data = copy.deepcopy(data)
    *parents, last = path
    holder = data
    for step in parents:
        holder = holder[step]
    if where == "key":
        holder[last + "\n"] = holder.pop(last)
    else:
        holder[last] = holder[last] + "\n"
    return data


def test_the_complete_inventory_is_valid(tmp_path):
    Settings.from_host_data(valid(tmp_path), inventory_name="mail.example.org")


def _cases() -> list:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        return list(_string_paths(valid(Path(directory))))


@pytest.mark.parametrize("path, where", _cases(), ids=lambda v: "/".join(map(str, v)) if isinstance(v, tuple) else v)
def test_a_trailing_newline_is_refused_naming_the_setting(tmp_path, path, where):
    data = _with_newline(valid(tmp_path), path, where)
    with pytest.raises(SettingsError) as refused:
        Settings.from_host_data(data, inventory_name="mail.example.org")
    assert re.split(r"[.\[]", refused.value.setting)[0].rstrip("\n") == path[0], str(refused.value)
    assert "\n" not in str(refused.value), "the error is one line"


def test_an_unknown_key_is_named_in_one_warning(tmp_path, caplog):
    data = {**valid(tmp_path), "offsite_copy": "sftp:nas:/backups", "colour": "blue",
            "ssh_user": "root", "_sudo": True, "fake_delay": 0}
    with caplog.at_level(logging.WARNING):
        Settings.from_host_data(data, inventory_name="mail.example.org")
    warnings = [r.getMessage() for r in caplog.records if "not settings" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "offsite_copy" in warnings[0] and "colour" in warnings[0]
    assert "ssh_user" not in warnings[0] and "_sudo" not in warnings[0] and "fake_delay" not in warnings[0]


@pytest.mark.parametrize("key", ["Hostname", "smtp-port", "DKIM_SELECTOR", "submision"])
def test_a_setting_spelt_another_way_is_refused(tmp_path, key):
    with pytest.raises(SettingsError) as refused:
        Settings.from_host_data({**valid(tmp_path), key: "x"}, inventory_name="mail.example.org")
    assert refused.value.setting == key


LOW = [
    ("accounts", [{"name": "debian", "password_env": "QMAILHOST_TEST_PASSWORD"}], "a system user"),
    ("accounts", [{"name": "www-data", "password_env": "QMAILHOST_TEST_PASSWORD"}], "a system user"),
    ("accounts", [{"name": "root", "password_env": "QMAILHOST_TEST_PASSWORD"}], "a system user"),
    ("hostname", "m" * 60 + ".example.org", "64"),
    ("smtp_port", 53, "port 53"),
    ("submission_port", 80, "port 80"),
    ("dns_forwarders", ["2001:db8::53"], "IPv6"),
    ("virtualdomains", {"example.com": "alice", "example.org": "alice"}, "local domain"),
    ("virtualdomains", {"example.com": "list"}, "no mail account"),  # Debian's own user "list" would get it
    ("virtualdomains", {"example.com": "alicex-lists"}, "no mail account"),
    ("extra_senders", {"mallory": ["@example.com"]}, "not an account"),
    ("extra_senders", {"alice": ["ceo@example.com\n"]}, "neither an address"),
    ("sources", {"spamdyke": {"url": "http://example.org/spamdyke-5.0.1.tgz;reboot"}}, "url"),
]


@pytest.mark.parametrize("setting, value, why", LOW, ids=[f"{s}-{w}" for s, _, w in LOW])
def test_values_that_would_fail_halfway_are_refused_first(tmp_path, setting, value, why):
    data = {**valid(tmp_path), setting: value}
    if setting == "accounts":
        data["verify_account"] = value[0]["name"]
    with pytest.raises(SettingsError) as refused:
        Settings.from_host_data(data, inventory_name="mail.example.org")
    assert re.split(r"[.\[]", refused.value.setting)[0] == setting, str(refused.value)
