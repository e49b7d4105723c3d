"""The brake on password guessing (files/accounts/login-brake.py), on its own.

Its counts and limits with a clock the test sets: per address, per account, per session
(behind stunnel), a familiar address passing the account's brake, refused tries not
counted, failures ageing out. And its checkpassword face as ofmipd runs it: the login on
fd 3 reaches the real check unchanged, and a held login never reaches it. The same brake
on a deployed host: tests/test_attacks.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest

from qmailhost.files import path as file_path

BRAKE = file_path("accounts/login-brake.py")
_spec = importlib.util.spec_from_file_location("login_brake", BRAKE)
brake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(brake)
STRANGER, OWNER = "203.0.113.9", "198.51.100.7"


def at(state, seconds: float) -> brake.Brake:
    return brake.Brake(state=str(state), now=1_000_000 + seconds)


def test_an_address_is_held_after_its_limit_and_let_go_when_the_failures_age(tmp_path):
    for n in range(brake.LIMITS["address"]):
        assert at(tmp_path, n).holding(f"user{n}", STRANGER) is None
        at(tmp_path, n).failed(f"user{n}", STRANGER)  # a different account each time: only the address adds up
    assert "address 203.0.113.9" in at(tmp_path, 20).holding("alice", STRANGER)
    assert at(tmp_path, 20).holding("alice", OWNER) is None
    assert at(tmp_path, brake.WINDOW + 10).holding("alice", STRANGER) is None


def test_an_account_is_held_from_everywhere_but_where_it_is_known(tmp_path):
    at(tmp_path, 0).passed("alice", OWNER)
    for n in range(brake.LIMITS["account"]):
        at(tmp_path, n).failed("alice", f"203.0.113.{n + 1}")
    assert "account alice" in at(tmp_path, 30).holding("alice", "192.0.2.1")
    assert "account alice" in at(tmp_path, 30).holding("alice", "127.0.0.1", "40000")
    assert at(tmp_path, 30).holding("alice", OWNER) is None  # its owner, from a familiar address
    assert at(tmp_path, 30).holding("bob", "192.0.2.1") is None


def test_behind_stunnel_a_session_is_held_after_three(tmp_path):
    for _ in range(brake.LIMITS["session"]):
        at(tmp_path, 1).failed("alice", "127.0.0.1", "40000")
    assert "session 127.0.0.1 40000" in at(tmp_path, 2).holding("alice", "127.0.0.1", "40000")
    assert at(tmp_path, 2).holding("alice", "127.0.0.1", "40002") is None
    assert not any("address" in key for key in brake.Brake.keys("alice", "127.0.0.1", "40000"))


@pytest.mark.skipif(os.geteuid() != 0, reason="root's counts given to the state's owner: needs root")
def test_what_root_counts_the_state_owner_reads():
    """Dovecot's PAM runs the brake as root, SMTP AUTH as the state directory's owner
    (ofmipd): a failure root counts must hold the account for that owner too."""
    import tempfile
    from pathlib import Path

    top = Path(tempfile.mkdtemp(prefix="brake-"))  # under /tmp: a path nobody may walk
    top.chmod(0o711)
    state = top / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    for n in range(brake.LIMITS["account"]):
        at(state, n).failed("alice", f"203.0.113.{n + 1}")  # as root: IMAP's failures
    for record in state.iterdir():
        if record.name != ".lock":
            assert (record.stat().st_uid, record.stat().st_mode & 0o777) == (65534, 0o600), record.name
    code = (f"import importlib.util, os; s = importlib.util.spec_from_file_location('b', {str(BRAKE)!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); os.setgid(65534); os.setuid(65534); "
            f"print(m.Brake(state={str(state)!r}, now=1_000_030).holding('alice', '127.0.0.1', '40000'))")
    held = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert held.startswith("account alice: 10 failed logins"), held
    subprocess.run(["rm", "-rf", str(top)], check=True)


def _checkpassword(tmp_path, login: bytes, env: dict) -> subprocess.CompletedProcess:
    """The brake as ofmipd runs it, in front of a check that accepts "right" and records what it read."""
    check = tmp_path / "check"
    check.write_text(f"#!{sys.executable}\nimport os, sys\ndata = os.read(3, 4096)\n"
                     f"open({str(tmp_path / 'seen')!r}, 'ab').write(data)\n"
                     "sys.exit(0 if data.split(b'\\0')[1] == b'right' else 1)\n")
    check.chmod(0o755)
    given = tmp_path / "login"
    given.write_bytes(login)
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('b', {str(BRAKE)!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            f"m.STATE = {str(tmp_path / 'state')!r}; sys.exit(m.main(sys.argv))")
    with open(given, "rb") as fd3:
        return subprocess.run([sys.executable, "-c", code, "checkpassword", str(check)], capture_output=True,
                              env={**os.environ, **env},
                              preexec_fn=lambda: os.dup2(os.dup(fd3.fileno()), 3), close_fds=False)


def _quiet(run: subprocess.CompletedProcess) -> int:
    """Its exit status, after checking it wrote nothing: under ofmipd's AUTH patch its stdout
    and stderr are the client's connection, where a stray line breaks the SMTP dialogue."""
    assert (run.stdout, run.stderr) == (b"", b""), "the brake wrote to the client's connection"
    return run.returncode


def test_as_checkpassword_it_passes_the_login_on_and_holds_a_guesser(tmp_path):
    env = {"TCPREMOTEIP": "127.0.0.1", "TCPREMOTEPORT": "40000"}
    assert _quiet(_checkpassword(tmp_path, b"alice\0right\0\0", env)) == 0
    assert (tmp_path / "seen").read_bytes() == b"alice\0right\0\0"
    for _ in range(3):
        assert _quiet(_checkpassword(tmp_path, b"alice\0guess\0\0", env)) == 1
    (tmp_path / "seen").unlink()
    assert _quiet(_checkpassword(tmp_path, b"alice\0right\0\0", env)) == 1
    assert "login-brake: refused 'alice' from 127.0.0.1 unchecked" in (tmp_path / "state" / "log").read_text()
    assert not (tmp_path / "seen").exists(), "a held login reached the password check"
    assert _quiet(_checkpassword(tmp_path, b"x" * 5000, env)) == 2  # over checkpassword's size: bad input


def test_a_failure_of_the_brake_is_a_temporary_error_said_in_its_log(tmp_path):
    (tmp_path / "state").write_text("not a directory")  # the state cannot be made
    env = {"TCPREMOTEIP": "127.0.0.1", "TCPREMOTEPORT": "40000"}
    assert _quiet(_checkpassword(tmp_path, b"alice\0right\0\0", env)) == 111
    assert not (tmp_path / "seen").exists()


def test_the_owners_good_login_starts_the_accounts_count_again(tmp_path):
    at(tmp_path, 0).passed("alice", OWNER)
    for n in range(brake.LIMITS["account"]):
        at(tmp_path, 1).failed("alice", f"203.0.113.{n + 1}")
    assert "account alice" in at(tmp_path, 2).holding("alice", "127.0.0.1", "40000")  # submission: held
    at(tmp_path, 3).passed("alice", OWNER)  # the owner reads mail from home
    assert at(tmp_path, 4).holding("alice", "127.0.0.1", "40001") is None


def test_a_known_place_is_not_shut_by_its_own_address_count(tmp_path):
    """Failures at the owner's address (a client there with an old password) hold that address
    for every other account, never for the account that is known there."""
    at(tmp_path, 0).passed("alice", OWNER)
    for n in range(brake.LIMITS["address"]):
        at(tmp_path, 1).failed(f"user{n}", OWNER)
    assert at(tmp_path, 2).holding("alice", OWNER) is None
    assert "address 198.51.100.7" in at(tmp_path, 2).holding("bob", OWNER)


def test_records_of_guessed_names_do_not_pile_up(tmp_path):
    """A stranger picks the account names a failure counts under: their records go once they
    no longer count, and what still counts stays."""
    brake.Brake(state=str(tmp_path)).failed("guessed-1", STRANGER)
    old = time.time() - brake.WINDOW - 60
    for record in tmp_path.iterdir():
        if not record.name.startswith("."):
            os.utime(record, (old, old))
    brake.Brake(state=str(tmp_path)).passed("alice", OWNER)
    brake.Brake(state=str(tmp_path)).failed("guessed-2", STRANGER)
    names = {record.name.split("-", 1)[0] for record in tmp_path.iterdir() if not record.name.startswith(".")}
    assert names == {"address", "account", "familiar"}
    assert len([r for r in tmp_path.iterdir() if r.name.startswith("account-")]) == 1  # guessed-1's is gone
    assert len(brake.Brake(state=str(tmp_path)).recent("address " + STRANGER)) == 1
