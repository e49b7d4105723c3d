"""testssl.sh (Debian's `testssl`) against one TLS port, judged by the mail host's TLS policy,
with a stored baseline (id -> severity) that a later scan must not be worse than. A scan sends
nothing but to the address given: no DNS, no CRL/OCSP or key-database look-ups."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent

# The smallest set covering protocols (-p), forward secrecy (-f), the ciphers offered per
# protocol (-E, one finding per suite), the server's order (-P), the certificate and server
# defaults (-S) and the standard vulnerability checks (-U).
OPTIONS = ("-p", "-f", "-E", "-P", "-S", "-U")

# testssl's fatal errors exit with 242..255; below that the code counts findings, not failures.
FIRST_ERROR_CODE = 242

# The self-signed certificate's own verdicts, and nothing else: the chain does not lead to a
# trusted CA (cert_chain_of_trust), its issuer is itself (cert_caIssuers), a self-signed
# certificate has no CRL or OCSP URI (cert_revocation), and a scan by IP has no hostname the
# certificate could match (cert_trust).
TRUST = ("cert_chain_of_trust", "cert_caIssuers", "cert_revocation", "cert_trust")

SEVERITY_ORDER = {"OK": 0, "INFO": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4, "FATAL": 5}
# WARN: testssl could not decide (e.g. a resumption check that lost its connection); it says
# nothing about the server and flips between runs, so it ranks with OK/INFO. DEBUG likewise.
NOT_A_VERDICT = ("WARN", "DEBUG")

# Values that change from scan to scan or certificate to certificate, left out of a baseline.
VOLATILE = ("scanTime", "cert", "cert_serialNumber", "cert_fingerprintSHA1", "cert_fingerprintSHA256",
            "cert_notBefore", "cert_notAfter")

OLD_PROTOCOLS = {"SSLv2": "SSLv2", "SSLv3": "SSLv3", "TLS1": "TLS 1.0", "TLS1_1": "TLS 1.1"}
VULNERABLE = re.compile(r"(?<!not )\bvulnerable\b", re.IGNORECASE)
AEAD = re.compile(r"_GCM_|_CCM|_CHACHA20_POLY1305")


class TestsslError(RuntimeError):
    pass


def available() -> str | None:
    if shutil.which("testssl"):
        return None
    return "SKIPPED (no testssl.sh): apt-get install testssl.sh"


def scan(address: str, port: int, starttls: str | None = None, timeout: float = 600) -> list[dict]:
    """testssl's findings for ADDRESS:PORT (ADDRESS an IP; STARTTLS e.g. "smtp"), each a dict
    with id, severity, finding, ip, port (and cve, cwe where testssl gives them)."""
    ip = ipaddress.ip_address(address)  # a name would need DNS, which a scan must not use
    target = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    with tempfile.TemporaryDirectory(prefix="testssl-") as tmp:
        jsonfile = Path(tmp) / "findings.json"
        argv = ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
                "--connect-timeout", "10", "--openssl-timeout", "10", "--jsonfile", str(jsonfile),
                *(["-6"] if ip.version == 6 else []), *(["--starttls", starttls] if starttls else []),
                *OPTIONS, target]
        # NXCONNECT: testssl probes its openssl with `s_client -connect invalid.`, a DNS query each;
        # 127.0.0.1:0 fails as well without leaving the machine. PHONE_OUT would enable CRL/OCSP fetches.
        env = {**os.environ, "PHONE_OUT": "false", "NXCONNECT": "127.0.0.1:0", "TMPDIR": tmp}
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env, cwd=tmp, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # testssl's own children (openssl, timeout) too
            process.communicate()
            raise TestsslError(f"testssl against {target} took over {timeout:.0f} s") from None
        try:
            findings = json.loads(jsonfile.read_text())
        except (OSError, ValueError) as error:
            raise TestsslError(f"testssl against {target} (exit {process.returncode}) left no JSON ({error}):\n"
                               f"{_tail(stdout + stderr)}") from None
    fatal = [f["finding"] for f in findings if f.get("id") == "scanProblem" and f.get("severity") == "FATAL"]
    if fatal or process.returncode >= FIRST_ERROR_CODE:
        raise TestsslError(f"testssl against {target} failed (exit {process.returncode}): "
                           f"{'; '.join(fatal) or _tail(stdout + stderr)}")
    if not any(f.get("id", "").startswith("cipher-") for f in findings):
        raise TestsslError(f"testssl against {target} listed no cipher suite:\n{_tail(stdout + stderr)}")
    return findings


def problems(findings: Iterable[dict], allow: Iterable[str] = TRUST) -> list[str]:
    """One line per finding the policy forbids, each starting with the finding's id: testssl's
    own verdicts (a severity of LOW or worse, or "vulnerable"), then explicitly an old protocol,
    a CBC, non-AEAD or non-forward-secret suite, or no server cipher order. Ids in ALLOW pass."""
    findings = list(findings)
    allowed = set(allow)
    lines: dict[str, str] = {}

    for finding in findings:
        id_, text = finding["id"], finding["finding"]
        if id_ in OLD_PROTOCOLS and text.startswith("offered"):
            lines[id_] = f"{id_}: {OLD_PROTOCOLS[id_]} offered ({finding['severity']})"
        elif id_.startswith("cipher-"):
            suite, faults = _suite_faults(text)
            if faults:
                lines[id_] = f"{id_}: {suite} offered ({', '.join(faults)})"
        elif id_ == "scanProblem":
            lines[id_] = f"{id_}: the scan is incomplete: {text}"
    if not any(f["id"].startswith("cipher-") for f in findings):
        lines["cipher-"] = "cipher-*: no cipher suites in the findings (a scan without -E): CBC and forward secrecy unchecked"
    order = [f for f in findings if f["id"] == "cipher_order"]
    if not order:
        lines["cipher_order"] = "cipher_order: missing (a scan without -P): the server's cipher order unchecked"
    elif order[0]["severity"] not in ("OK", "INFO"):
        lines["cipher_order"] = f"cipher_order: no server cipher order ({order[0]['severity']}: {order[0]['finding']})"

    for finding in findings:
        id_, severity, text = finding["id"], finding["severity"], finding["finding"]
        if id_ in lines or id_.split(" ")[0] in allowed:  # "cert_trust <hostCert#2>" with two certificates
            continue
        if _rank(severity) >= SEVERITY_ORDER["LOW"] or VULNERABLE.search(text):
            lines[id_] = f"{id_}: {text} ({severity})"
    return list(lines.values())


def summary(findings: Iterable[dict]) -> dict[str, str]:
    """{id: severity}, sorted, without the volatile ids; a repeated id keeps its worst severity."""
    result: dict[str, str] = {}
    for finding in findings:
        id_, severity = finding["id"], finding["severity"]
        if id_.split(" ")[0] in VOLATILE or severity == "DEBUG":
            continue
        if id_ not in result or _rank(severity) > _rank(result[id_]):
            result[id_] = severity
    return dict(sorted(result.items()))


def worse(baseline: dict[str, str], current: dict[str, str]) -> list[str]:
    """Each id whose severity rose since BASELINE, or that is new at LOW or worse."""
    lines = []
    for id_, severity in sorted(current.items()):
        if id_ in baseline:
            if _rank(severity) > _rank(baseline[id_]):
                lines.append(f"{id_}: {baseline[id_]} -> {severity}")
        elif _rank(severity) > SEVERITY_ORDER["INFO"]:
            lines.append(f"{id_}: new, {severity}")
    return lines


def check_against_baseline(path: Path, current: dict[str, str]) -> list[str]:
    """worse(baseline at PATH, CURRENT); with no file there, writes CURRENT as the baseline
    (a warning says so) and returns []. A relative PATH is taken from the repository's root."""
    path = path if path.is_absolute() else PROJECT / path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        warnings.warn(f"testssl: no baseline at {path}: wrote this scan's as the baseline (first run)", stacklevel=2)
        return []
    return worse(json.loads(path.read_text()), current)


def _suite_faults(text: str) -> tuple[str, list[str]]:
    """The suite in a -E finding ("TLS 1.2   xc013   ECDHE-RSA-AES128-SHA   ECDH 253   AES   128
    TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA") as "protocol name", and what the policy finds wrong with it."""
    words = text.split()
    at = next((i for i, word in enumerate(words) if re.fullmatch(r"x[0-9a-f]+", word)), None)
    if at is None or at + 1 >= len(words):
        return text, ["not understood"]
    protocol, openssl_name, iana = " ".join(words[:at]), words[at + 1], words[-1]
    if re.match(r"(TLS|SSL)_", iana):
        name, cbc, aead = iana, "_CBC" in iana, bool(AEAD.search(iana))
        forward_secret = "_WITH_" not in iana or bool(re.match(r"TLS_(ECDHE|DHE)_", iana))  # no _WITH_: TLS 1.3
    else:  # a suite testssl knows no IANA name for
        name, cbc, aead = openssl_name, False, bool(re.search(r"GCM|CCM|CHACHA20", openssl_name))
        forward_secret = openssl_name.startswith(("ECDHE-", "DHE-", "EDH-", "TLS_"))
    faults = ["CBC"] if cbc else [] if aead else ["no AEAD"]
    if not forward_secret:
        faults.append("no forward secrecy")
    return f"{protocol} {name}", faults


def _rank(severity: str) -> int:
    if severity in NOT_A_VERDICT:
        return SEVERITY_ORDER["INFO"]
    return SEVERITY_ORDER.get(severity, SEVERITY_ORDER["FATAL"])


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
