"""qmailhost (accounts/): the brake on password guessing, shared by SMTP AUTH and IMAP.

Installed with the platform's python3 on its first line. Every login the host checks passes
through it, so one count holds across 587, 465, 993 and 143:

    login-brake checkpassword PROGRAM...   what ofmipd (or spamdyke) runs as checkpassword:
                                           reads the login from fd 3 as checkpassword does,
                                           hands it to PROGRAM (checkpassword and the gate)
    login-brake pam check|failed|passed    from pam_exec in Dovecot's PAM service (PAM_USER,
                                           PAM_RHOST)

Failed logins are counted per client address, per account, and, for SMTP behind stunnel
(where every client comes from 127.0.0.1), per session. Past a limit within WINDOW the next
tries are refused without their password being checked, even a right one, until the oldest
failure ages out; a refused try is not counted, so the brake lets go on its own. An address
an account logged in from lately (FAMILIAR) is held back for that account by neither the
account's count nor the address's: a stranger can slow a password down, not lock its owner
out of their mail where the owner is known (nor can a misconfigured client at the same
address), and the owner's next good login there starts the account's count again (so a held
account lets go as soon as its owner reads mail from home). Standard library only; state in
STATE (one small file per key, under one lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import subprocess
import sys
import time

STATE = "/var/lib/qmailhost/login-brake"
WINDOW = 15 * 60  # seconds a failure counts
FAMILIAR = 30 * 24 * 3600  # seconds an address stays familiar to an account after a good login
LIMITS = {"address": 10, "account": 10, "session": 3}  # failures within WINDOW before the brake holds
LOGIN_MAX = 1024  # checkpassword's fd 3: name, password, timestamp (each NUL-ended)


# kind of record -> how long it matters
KINDS = {"address": WINDOW, "account": WINDOW, "session": WINDOW, "familiar": FAMILIAR}


def _path(state: str, key: str) -> str:
    kind = key.split(" ", 1)[0]
    return os.path.join(state, f"{kind}-{hashlib.sha256(key.encode(errors='replace')).hexdigest()[:40]}")


def _sweep(state: str, now: float) -> None:
    """Remove the records that no longer count. A stranger picks the account names and the
    addresses a failure is counted under: without this, each guess would leave a file for good."""
    for name in os.listdir(state):
        keep = KINDS.get(name.split("-", 1)[0])
        if keep is None:
            continue
        path = os.path.join(state, name)
        with contextlib.suppress(OSError):
            if now - os.stat(path).st_mtime > keep:
                os.unlink(path)


def _times(state: str, key: str) -> list[float]:
    try:
        with open(_path(state, key)) as record:
            return [float(line) for line in record if line.strip()]
    except (OSError, ValueError):
        return []


def _write(state: str, key: str, times: list[float]) -> None:
    """Replace KEY's record (by rename: whoever made the old file, root or ofmipd, the other may replace it)."""
    path = _path(state, key)
    if not times:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    spare = f"{path}.{os.getpid()}"
    with open(spare, "w") as record:
        _as_state_owner(state, record.fileno())
        record.write("".join(f"{moment:.0f}\n" for moment in times))
    os.replace(spare, path)


def _as_state_owner(state: str, descriptor: int) -> None:
    """A file root makes (Dovecot's PAM) is given to STATE's owner (who runs SMTP AUTH), mode
    600: else that side could not read root's counts, and a guesser on IMAP would not be held
    on submission."""
    os.fchmod(descriptor, 0o600)
    if os.geteuid() == 0:
        owner = os.stat(state)
        os.fchown(descriptor, owner.st_uid, owner.st_gid)


class Brake:
    def __init__(self, state: str | None = None, now: float | None = None, limits: dict[str, int] = LIMITS):
        self.state, self.limits = state or STATE, limits
        self.now = time.time() if now is None else now
        state = self.state
        os.makedirs(state, mode=0o700, exist_ok=True)
        self._lock = open(os.path.join(state, ".lock"), "a")  # noqa: SIM115 (held for the whole run)
        _as_state_owner(state, self._lock.fileno())
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    @staticmethod
    def keys(account: str, address: str, session: str) -> dict[str, str]:
        """kind -> key this login counts under. Loopback means stunnel: its session stands in."""
        keys = {"account": f"account {account}"}
        try:
            loopback = ipaddress.ip_address(address).is_loopback
        except ValueError:
            loopback = True
        if loopback:
            keys["session"] = f"session {address} {session}"
        else:
            keys["address"] = f"address {address}"
        return keys

    def recent(self, key: str) -> list[float]:
        return [moment for moment in _times(self.state, key) if self.now - moment < WINDOW]

    def holding(self, account: str, address: str, session: str = "") -> str | None:
        """Why this login is refused unchecked ("account alice: 10 failures ..."), or None."""
        familiar = any(self.now - moment < FAMILIAR for moment in _times(self.state, f"familiar {account} {address}"))
        for kind, key in self.keys(account, address, session).items():
            if familiar and kind != "session":  # the account's own known place: neither its count nor the address's
                continue
            failures = self.recent(key)
            if len(failures) >= self.limits[kind]:
                wait = int(WINDOW - (self.now - min(failures))) + 1
                return f"{kind} {key.split(' ', 1)[1]}: {len(failures)} failed logins in {WINDOW // 60} min, " \
                       f"held for {wait} s more"
        return None

    def failed(self, account: str, address: str, session: str = "") -> None:
        _sweep(self.state, time.time())
        for key in self.keys(account, address, session).values():
            _write(self.state, key, [*self.recent(key), self.now][-64:])

    def passed(self, account: str, address: str, session: str = "") -> None:
        """A good login: its address becomes familiar, and the account's count starts again
        (the password was right, so whoever holds it has no more to guess; a stranger's
        address keeps its own count)."""
        keys = self.keys(account, address, session)
        if "address" in keys:
            _write(self.state, f"familiar {account} {address}", [self.now])
        _write(self.state, keys["account"], [])


LOG_MAX = 256 * 1024  # bytes of STATE/log before it becomes log.old


def _say(line: str, state: str | None = None) -> None:
    """Append LINE to STATE/log (root's to read). Never to stderr: under ofmipd's AUTH patch
    and spamdyke that is the client's connection, where one stray line breaks the dialogue."""
    path = os.path.join(state or STATE, "log")
    try:
        if os.path.getsize(path) > LOG_MAX:
            os.replace(path, f"{path}.old")
    except OSError:
        pass
    try:
        with open(path, "a") as log:
            _as_state_owner(state or STATE, log.fileno())
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} login-brake: {line}\n")
    except OSError:
        pass


def checkpassword(program: list[str]) -> int:
    """checkpassword's interface in front of PROGRAM: 0 for a good login, 1 otherwise."""
    login = b""
    while len(login) <= LOGIN_MAX:  # fd 3 stays open (so nothing else is opened as 3) until the pipe replaces it
        chunk = os.read(3, LOGIN_MAX + 1 - len(login))
        if not chunk:
            break
        login += chunk
    if len(login) > LOGIN_MAX or login.count(b"\0") < 2:
        return 2  # checkpassword's "bad input": ofmipd answers as to a wrong password
    account = login.split(b"\0", 1)[0].decode(errors="replace")
    address = os.environ.get("TCPREMOTEIP", "")
    session = os.environ.get("TCPREMOTEPORT", "")
    brake = Brake()
    why = brake.holding(account, address, session)
    if why:
        _say(f"refused {account!r} from {address} unchecked: {why}", brake.state)
        return 1
    reading, writing = os.pipe()
    os.dup2(reading, 3)  # replaces the login's descriptor, as checkpassword's interface wants
    os.close(reading)
    child = subprocess.Popen(program, pass_fds=(3,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    os.close(3)
    try:
        os.write(writing, login)  # at most LOGIN_MAX bytes: one write to a pipe
    except BrokenPipeError:
        pass  # the check read no login: its exit status says the rest
    finally:
        os.close(writing)
    status = child.wait()
    if status == 0:
        brake.passed(account, address, session)
    elif status == 1:  # a wrong password or the gate's refusal; 111 (a temporary error) is no guess
        brake.failed(account, address, session)
    return 0 if status == 0 else 1


def pam(step: str) -> int:
    account, address = os.environ.get("PAM_USER", ""), os.environ.get("PAM_RHOST", "")
    brake = Brake()
    if step == "check":
        why = brake.holding(account, address)
        if why:
            _say(f"refused {account!r} from {address} unchecked: {why}", brake.state)
            return 1
    elif step == "failed":
        brake.failed(account, address)
    elif step == "passed":
        brake.passed(account, address)
    else:
        return 2
    return 0


def main(argv: list[str]) -> int:
    """A failure of the brake itself is a temporary error (111: the client may try again), logged."""
    os.umask(0o077)
    try:
        if len(argv) >= 3 and argv[1] == "checkpassword":
            return checkpassword(argv[2:])
        if len(argv) == 3 and argv[1] == "pam":
            return pam(argv[2])
    except Exception as error:  # noqa: BLE001 (nothing may reach the client's connection)
        _say(f"failed: {type(error).__name__}: {error}")
        return 111
    sys.stderr.write("usage: login-brake checkpassword PROGRAM... | login-brake pam check|failed|passed\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
