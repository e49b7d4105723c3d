"""Settings: defaults, derived values and validation (no host needed)."""

import re
from pathlib import Path

import pytest

from qmailhost.settings import Settings, SettingsError, declared_settings


def settings(**data):
    return Settings.from_host_data(data, inventory_name="mail.example.org")


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


ALICE = [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD"}]


def test_defaults_derive_from_the_inventory_name():
    s = settings(accounts=ALICE)
    assert s.hostname == "mail.example.org"
    assert s.domains == ("example.org",)
    assert s.aliases == {"postmaster": "alice", "root": "alice", "mailer-daemon": "alice", "abuse": "alice"}
    assert (s.smtp_port, s.submission_port, s.ofmipd_port) == (25, 587, 26)
    assert s.submission == "ofmipd" and s.self_signed


def test_the_password_is_read_but_never_shown():
    s = settings(accounts=ALICE)
    assert s.accounts[0].password == "correct horse"
    assert "correct horse" not in repr(s)
    assert s.accounts[0].password_source == "env:QMAILHOST_TEST_PASSWORD"


def test_password_file(tmp_path):
    (tmp_path / "pw").write_text("from a file\n")
    s = settings(accounts=[{"name": "alice", "password_file": str(tmp_path / "pw")}])
    assert s.accounts[0].password == "from a file"


def test_spamdyke_filters_merge_over_the_defaults():
    s = settings(accounts=ALICE, spamdyke_filters={"dns_blacklists": []})
    assert s.spamdyke_filters["dns_blacklists"] == []
    assert s.spamdyke_filters["reject_empty_rdns"] is True


def test_the_readme_lists_every_setting_the_components_declare_and_no_other():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    listed = {m for m in re.findall(r"^\| `([a-z][a-z0-9_]*)`", table, re.MULTILINE)}
    assert listed == {setting.name for _, setting in declared_settings()}


@pytest.mark.parametrize("data, setting", [
    ({"hostname": "Mail.Example.org"}, "hostname"),
    ({"domains": "not a domain"}, "domains"),
    ({"domains": ["example.org", "example.org"]}, "domains"),
    ({"accounts": "alice"}, "accounts"),
    ({"accounts": ALICE + ALICE}, "accounts"),
    ({"accounts": [{"name": "alice", "password_env": "QMAILHOST_TEST_PASSWORD", "password_file": "/x"}]},
     "accounts[alice]"),
    ({"aliases": {"Bad Alias": "alice"}}, "aliases"),
    ({"smtproutes": {"": "not a host!"}}, "smtproutes"),
    ({"ofmipd_port": "26"}, "ofmipd_port"),
    ({"databytes": True}, "databytes"),
    ({"submission": None}, "submission"),
    ({"sources": ["notqmail"]}, "sources"),
])
def test_bad_values_name_their_setting(data, setting):
    with pytest.raises(SettingsError) as refused:
        settings(**{"accounts": ALICE, **data})
    assert refused.value.setting == setting
    assert str(refused.value).startswith(f"setting {setting!r}: ") and "\n" not in str(refused.value)


def test_aliases_need_an_account():
    with pytest.raises(SettingsError, match="postmaster has nowhere to go"):
        settings()


def test_the_example_inventory_is_valid(monkeypatch, tmp_path):
    import runpy

    monkeypatch.setenv("QMAILHOST_ALICE_PASSWORD", "alice's")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".config/qmailhost").mkdir(parents=True)
    (tmp_path / ".config/qmailhost/bob.password").write_text("bob's\n")
    example = Path(__file__).resolve().parent.parent / "inventory/example.py"
    (name, data), = runpy.run_path(str(example))["mail_hosts"]
    s = Settings.from_host_data(data, inventory_name=name)
    assert s.domains == ("example.org", "example.net") and s.aliases["info"] == "bob"


def test_a_misspelt_setting_is_refused_and_named_with_the_likely_one():
    with pytest.raises(SettingsError, match=r"setting 'submision': is not a setting, and would be ignored; "
                                           r"did you mean 'submission'\?"):
        settings(accounts=ALICE, submision="spamdyke")


def test_pyinfra_s_own_host_data_is_no_misspelt_setting():
    s = settings(accounts=ALICE, ssh_port=2222, ssh_user="root", _sudo=True, ssh_key="~/.ssh/id")
    assert s.smtp_port == 25


@pytest.mark.parametrize("filters, setting", [
    ({"dns_blacklists": "zen.spamhaus.org"}, "spamdyke_filters.dns_blacklists"),
    ({"dns_blacklists": ["not a zone!"]}, "spamdyke_filters.dns_blacklists"),
    ({"greeting_delay_secs": "5"}, "spamdyke_filters.greeting_delay_secs"),
    ({"reject_empty_rdns": 1}, "spamdyke_filters.reject_empty_rdns"),
])
def test_nested_settings_are_checked_by_type(filters, setting):
    with pytest.raises(SettingsError) as refused:
        settings(accounts=ALICE, spamdyke_filters=filters)
    assert refused.value.setting == setting
