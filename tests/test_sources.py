"""Sources: pins, inventory overrides, SHA512SUMS overrides and verification (no network)."""

import hashlib

import pytest

from qmailhost.settings import SettingsError
from qmailhost.sources import PINS, DistfileError, fetch, resolve


def test_pins_are_the_upstream_releases():
    assert PINS["notqmail"].version == "1.08"
    assert PINS["notqmail"].url.endswith("/notqmail-1.08/notqmail-1.08.tar.gz")
    assert all(len(p.sha512) == 128 for p in PINS.values())


def test_an_override_of_version_needs_a_checksum(tmp_path):
    with pytest.raises(SettingsError, match="sources.notqmail"):
        resolve({"notqmail": {"version": "1.09"}}, tmp_path, False)
    sha = "a" * 128
    resolved = resolve({"notqmail": {"version": "1.09", "sha512": sha}}, tmp_path, False)["notqmail"]
    assert (resolved.filename, resolved.sha512) == ("notqmail-1.09.tar.gz", sha)
    assert "notqmail-1.09/notqmail-1.09.tar.gz" in resolved.url


def test_a_url_override_keeps_the_pin_unless_told(tmp_path):
    resolved = resolve({"spamdyke": {"url": "https://mirror.example/spamdyke-5.0.1.tgz"}}, tmp_path, False)
    assert resolved["spamdyke"].sha512 == PINS["spamdyke"].sha512
    assert resolved["spamdyke"].url.startswith("https://mirror.example/")


def test_sha512sums_overrides_only_an_explicit_cache(tmp_path):
    (tmp_path / "SHA512SUMS").write_text(f"{'b' * 128}  spamdyke-5.0.1.tgz\n")
    assert resolve({}, tmp_path, False)["spamdyke"].sha512 == PINS["spamdyke"].sha512
    assert resolve({}, tmp_path, True)["spamdyke"].sha512 == "b" * 128


def test_fetch_verifies_what_is_in_the_cache(tmp_path):
    data = b"release"
    (tmp_path / "spamdyke-5.0.1.tgz").write_bytes(data)
    good = resolve({"spamdyke": {"sha512": hashlib.sha512(data).hexdigest()}}, tmp_path, False)["spamdyke"]
    assert fetch(good, tmp_path) == tmp_path / "spamdyke-5.0.1.tgz"
    with pytest.raises(DistfileError, match="does not match"):
        fetch(PINS["spamdyke"], tmp_path)


def test_an_unreachable_upstream_is_one_clear_error(tmp_path):
    from dataclasses import replace

    unreachable = replace(PINS["checkpassword"], url="http://127.0.0.1:9/checkpassword-0.90.tar.gz")
    with pytest.raises(DistfileError, match="cannot be downloaded") as refused:
        fetch(unreachable, tmp_path)
    assert "\n" not in str(refused.value)
    assert not list(tmp_path.iterdir())  # no partial file left behind
