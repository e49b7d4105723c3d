"""Bad input is refused with one clear line before anything on the host changes:
bad settings and distfiles that do not match their checksums, through the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from harness import sandbox
from harness.pyinfra_cli import LOCAL_MIRROR, host_listing, pyinfra
from qmailhost.sources import PINS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bare_host(sandbox_ready):
    host = sandbox.create(f"t{os.getpid()}-refusals")
    before = host_listing(host, "/etc /usr /var /home")
    try:
        yield host
    finally:
        try:
            assert host_listing(host, "/etc /usr /var /home") == before, "a refused run changed the host"
        finally:
            sandbox.destroy(host.name)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """Two self-signed pairs made here, and a file that is not a certificate."""
    directory = tmp_path_factory.mktemp("tls")
    for name in ("one", "two"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                        "-subj", f"/CN={name}.example.org", "-keyout", directory / f"{name}.key",
                        "-out", directory / f"{name}.crt"], check=True, capture_output=True)
    (directory / "garbage.crt").write_text("not a certificate\n")
    return directory


def account(**source):
    return [{"name": sandbox.SANDBOX_USER, **source}]


BAD_SETTINGS = {
    # case: (data, the setting the error must name)
    "hostname with spaces": ({"hostname": "not a host"}, "hostname"),
    "hostname not qualified": ({"hostname": "mail"}, "hostname"),
    "empty domain list": ({"domains": []}, "domains"),
    "malformed domain": ({"domains": ["bad..example"]}, "domains"),
    "unknown mode": ({"submission": "postfix"}, "submission"),
    "tmda mode on Debian": ({"submission": "tmda"}, "submission"),
    "port clash": ({"submission_port": 25}, "submission_port"),
    "port out of range": ({"smtp_port": 70000}, "smtp_port"),
    "missing password source": ({"accounts": account()}, "accounts[alice]"),
    "password env unset": ({"accounts": account(password_env="QMAILHOST_TEST_UNSET")}, "accounts[alice]"),
    "password file missing": ({"accounts": account(password_file="/nonexistent/pw")}, "accounts[alice]"),
    "password in the inventory": ({"accounts": account(password="hunter2")}, "accounts[alice]"),
    "reserved account name": ({"accounts": [{"name": "root", "password_env": "HOME"}]}, "accounts"),
    "invalid account name": ({"accounts": [{"name": "Alice!", "password_env": "HOME"}]}, "accounts"),
    "alias to an unknown account": ({"aliases": {"postmaster": "bob"}}, "aliases"),
    "unreadable certificate": ({"tls_cert": "/nonexistent.crt", "tls_key": "TLS/one.key"}, "tls_cert"),
    "certificate that is no certificate": ({"tls_cert": "TLS/garbage.crt", "tls_key": "TLS/one.key"}, "tls_cert"),
    "key not matching the certificate": ({"tls_cert": "TLS/one.crt", "tls_key": "TLS/two.key"}, "tls_key"),
    "certificate without key": ({"tls_cert": "TLS/one.crt"}, "tls_key"),
    "negative message size": ({"databytes": -1}, "databytes"),
    "concurrency too high": ({"concurrency_remote": 500}, "concurrency_remote"),
    "unknown spamdyke filter": ({"spamdyke_filters": {"reject_everything": True}}, "spamdyke_filters"),
    "unknown source component": ({"sources": {"postfix": {}}}, "sources"),
    "unpinned version without checksum": ({"sources": {"notqmail": {"version": "1.09"}}}, "sources.notqmail"),
    "bad virtual domain entry": ({"virtualdomains": {"lists.example.org": "bad prefix!"}}, "virtualdomains"),
    "misspelt setting (the rollback would silently not happen)": ({"submision": "spamdyke"}, "submision"),
    "a string where a list of zones goes": ({"spamdyke_filters": {"dns_blacklists": "zen.spamhaus.org"}},
                                           "spamdyke_filters.dns_blacklists"),
    "a string where true or false goes": ({"spamdyke_filters": {"reject_empty_rdns": "no"}},
                                         "spamdyke_filters.reject_empty_rdns"),
    "a forwarder that is no address": ({"dns_forwarders": ["resolver.example"]}, "dns_forwarders"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_setting_is_refused_with_one_line(bare_host, tls_files, case):
    data, setting = BAD_SETTINGS[case]
    data = {key: (value.replace("TLS/", f"{tls_files}/") if isinstance(value, str) else value)
            for key, value in data.items()}
    run = pyinfra(bare_host, data=data, check=False, json_output=False)
    assert run.returncode != 0
    errors = [line for line in run.output.splitlines() if f"setting {setting!r}:" in line]
    assert len(errors) == 1, run.output[-2000:]
    assert "; " in errors[0]  # the problem, then the fix
    assert "Traceback" not in run.output
    assert "Starting operation" not in run.output
    if "password" in case:
        assert "hunter2" not in run.output


def test_a_distfile_with_a_wrong_checksum_is_refused(bare_host, tmp_path):
    if not (LOCAL_MIRROR / "SHA512SUMS").exists():
        pytest.skip(f"SKIPPED (no sources): no local mirror at {LOCAL_MIRROR} to copy distfiles from")
    for pin in PINS.values():
        shutil.copy(LOCAL_MIRROR / pin.filename, tmp_path / pin.filename)
    with open(tmp_path / PINS["notqmail"].filename, "ab") as tampered:
        tampered.write(b"\0")  # one byte more than the release
    sums = (LOCAL_MIRROR / "SHA512SUMS").read_text().splitlines()
    (tmp_path / "SHA512SUMS").write_text("\n".join(s for s in sums if "notqmail" not in s) + "\n")
    run = pyinfra(bare_host, check=False, json_output=False, env={"QMAILHOST_DISTFILES": str(tmp_path)},
                  data={"distfiles": None})
    assert run.returncode != 0
    refusal = [line for line in run.output.splitlines() if "notqmail-1.08.tar.gz" in line and "SHA512" in line]
    assert len(refusal) == 1 and "does not match" in refusal[0], run.output[-2000:]
    assert "Starting operation" not in run.output
    assert bare_host.ssh("test -e /var/qmail || dpkg -s build-essential", check=False).returncode != 0
