"""The acme_renewal status check, judged on real files: a certificate made by openssl with a
given lifetime and the renewal script's status file, read by the check's own shell command
(run here under sh, its paths moved into a temporary directory). A failed renewal warns,
and errors once the certificate in service expires within 7 days; no certificate yet warns;
other pair sources skip, saying so."""

from __future__ import annotations

import subprocess

import pytest

from qmailhost.checks import ERROR, OK, SKIPPED, WARNING, Target
from qmailhost.platform import Platform, debian
from qmailhost.settings import Settings
from tasks import acme


@pytest.fixture
def platform() -> Platform:
    return debian("13")


def target(tmp_path, platform, tls="acme", days=None, status=None) -> Target:
    files = acme.files(platform)
    live = tmp_path / files["live"].lstrip("/")
    live.mkdir(parents=True)
    if days is not None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days),
                        "-subj", "/CN=mail.example.org", "-keyout", str(live / "privkey.pem"),
                        "-out", str(live / "cert.pem")], check=True, capture_output=True)
    status_file = tmp_path / files["status"].lstrip("/")
    status_file.parent.mkdir(parents=True, exist_ok=True)
    if status is not None:
        status_file.write_text(status)
    data = {"hostname": "mail.example.org", "tls": tls, "accounts": [{"name": "alice", "password_env": "HOME"}]}
    if tls == "acme":
        data["acme_contact"] = "postmaster@example.org"

    def shell(command: str) -> tuple[bool, str]:
        for path in (files["status"], files["live"]):
            command = command.replace(path, str(tmp_path) + path)
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
        return result.returncode == 0, result.stdout

    return Target(Settings.from_host_data(data), platform, "192.0.2.1", shell)


def test_a_renewal_that_went_well_is_ok_with_the_days_left(tmp_path, platform):
    level, reason = acme.check_acme_renewal(target(tmp_path, platform, days=60,
                                                   status="ok\t2026-12-02T10:00:00Z\n"))
    assert level == OK and "2026-12-02T10:00:00Z" in reason and "expires in 59 days" in reason


def test_a_failed_renewal_warns_with_certbots_reason(tmp_path, platform):
    level, reason = acme.check_acme_renewal(target(
        tmp_path, platform, days=20, status="failed\t2026-12-02T10:00:00Z\tConnection refused to the CA\n"))
    assert level == WARNING and "Connection refused to the CA" in reason and "expires in 19 days" in reason


def test_a_failed_renewal_is_an_error_near_expiry(tmp_path, platform):
    level, reason = acme.check_acme_renewal(target(
        tmp_path, platform, days=5, status="failed\t2026-12-02T10:00:00Z\tConnection refused\n"))
    assert level == ERROR and "expires in 4 days" in reason


def test_no_certificate_from_the_ca_yet_warns(tmp_path, platform):
    level, reason = acme.check_acme_renewal(target(tmp_path, platform))
    assert level == WARNING and "no certificate from the ACME CA" in reason


def test_issued_but_not_yet_renewed_is_ok(tmp_path, platform):
    level, reason = acme.check_acme_renewal(target(tmp_path, platform, days=90))
    assert level == OK and "no renewal run yet" in reason


def test_other_pair_sources_skip_saying_so(tmp_path, platform):
    assert acme.check_acme_renewal(target(tmp_path, platform, tls="self-signed")) == \
        (SKIPPED, "tls is self-signed, not acme")

