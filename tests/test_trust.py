"""Trustworthy runs: the dry run predicts exactly, changes nothing, shows no secret, and
a run cut off at any point recovers with a plain re-run."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from harness import sandbox
from harness.mail import message, submit, submit_when_up, wait_for_delivery
from harness.pyinfra_cli import PROJECT, PYINFRA, pyinfra

pytestmark = [pytest.mark.e2e, pytest.mark.sources]
USER, DOMAIN = sandbox.SANDBOX_USER, sandbox.SANDBOX_DOMAIN

# Everything but the kernel's filesystems; login records change with every SSH login.
WHOLE_FS = (
    "find / -xdev \\( -path /var/log/wtmp -o -path /var/log/btmp -o -path /var/log/lastlog \\) -prune -o "
    "\\( -type f -printf '%p %m %U %G %s %T@ ' -exec sh -c 'sha256sum < \"$1\" | cut -c1-64' _ {} \\; \\) "
    "-o \\( ! -type f -printf '%p %y %m %U %G %l\\n' \\) | sort"
)


def whole_fs(host: sandbox.Host) -> str:
    return host.ssh(WHOLE_FS, timeout=900).stdout


@pytest.fixture(scope="module")
def host(sandbox_ready, sources):
    made = sandbox.create(f"t{os.getpid()}-trust")
    try:
        yield made
    finally:
        sandbox.destroy(made.name)


def predict_then_apply(host: sandbox.Host, data: dict | None = None) -> list[str]:
    dry = pyinfra(host, "--dry", data=data)
    real = pyinfra(host, data=data)
    assert sorted(real.changed()) == sorted(dry.planned())
    return real.changed()


def test_dry_run_on_a_bare_host_changes_nothing_and_predicts_exactly(host):
    before = whole_fs(host)
    pyinfra(host, "--dry", "--diff")
    assert whole_fs(host) == before
    changed = predict_then_apply(host)
    assert "Build and install the sources" in changed


def test_prediction_on_a_converged_host_is_no_change(host):
    assert predict_then_apply(host) == []


@pytest.mark.slow  # 4 min; in every run: test_mailhost's dry run of a domain change, test_drift's predictions
def test_prediction_of_a_domain_change_and_a_mode_switch(host):
    domains = {"domains": [DOMAIN, "example.net"]}
    pyinfra(host)  # converged first: -m slow runs this test without the ones before it
    before = whole_fs(host)
    pyinfra(host, "--dry", "--diff", data=domains)
    assert whole_fs(host) == before
    assert sorted(predict_then_apply(host, domains)) == [  # the new domain gets its DKIM key, read per message
        "Make the DKIM rsa key mail for example.net", "Reload qmail-send", "Write /etc/qmailhost/senders.json",
        "Write control/locals", "Write control/rcpthosts", "Write the DKIM signing table"]  # (and senders its names)
    switched = predict_then_apply(host, {**domains, "submission": "spamdyke"})
    assert "Restart qmail-ofmipd" in switched and "Write the run script of qmail-ofmipd" in switched
    assert predict_then_apply(host) != []  # back to the inventory's settings


def test_no_secret_in_any_output(host, tmp_path):
    password = "known test password 7f3a"
    (tmp_path / "alice.pw").write_text(password + "\n")
    pairs = []
    for name in ("one", "two"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
                        f"/CN={sandbox.SANDBOX_HOSTNAME}", "-keyout", tmp_path / f"{name}.key",
                        "-out", tmp_path / f"{name}.crt"], check=True, capture_output=True)
        pairs.append({"tls_cert": str(tmp_path / f"{name}.crt"), "tls_key": str(tmp_path / f"{name}.key")})
    accounts = {"accounts": [{"name": USER, "password_file": str(tmp_path / "alice.pw")}]}
    outputs = []
    for pair in pairs:
        data = {**accounts, **pair}
        for args in (["-vv", "--dry", "--diff"], ["-vv", "--diff"], ["--dry"], ["-vv"]):
            outputs.append(pyinfra(host, *args, data=data).output)
    everything = "\n".join(outputs)
    assert "Will replace secret /etc/qmailhost/tls/key.pem (its content is never shown)" in everything
    shadow_hash = host.ssh(f"getent shadow {USER} | cut -d: -f2").stdout.strip()
    assert shadow_hash.startswith("$6$")
    assert password not in everything and shadow_hash not in everything
    assert shadow_hash.rsplit("$", 1)[1][:16] not in everything  # not even a piece of the digest
    for pair in pairs:
        key_lines = [line for line in Path(pair["tls_key"]).read_text().splitlines() if not line.startswith("-----")]
        assert key_lines and not [line for line in key_lines if line in everything]
    msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}")
    submit(host, USER, password, msg)  # the password from the file is the one the host checks
    wait_for_delivery(host, USER, msg["Subject"])


def interrupted_deploy_recovers(host: sandbox.Host, after_seconds: float) -> None:
    """Kill pyinfra AFTER_SECONDS into a deploy from bare; a plain re-run must finish,
    mail must flow end to end, and a third run must report no changes."""
    env = {**os.environ, "QMAILHOST_SANDBOX_HOST": host.name, "QMAILHOST_SANDBOX_DATA": "{}"}
    run = subprocess.Popen([PYINFRA, "-y", "inventory/sandbox.py", "deploy.py"], cwd=PROJECT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run.wait(timeout=after_seconds)
        pytest.fail(f"the deploy ended before it could be interrupted at {after_seconds} s")
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    # Whatever the kill left half done, nothing it left is readable by others (secrets are
    # uploaded into files made private first).
    left = host.ssh("find / -xdev \\( -name '*.qmailhost-new' -o -name '.qmailhost-chpasswd-*' \\) "
                    "-type f -printf '%m %p\\n' 2>/dev/null; true").stdout.split("\n")
    readable = [line for line in left if line and int(line.split()[0], 8) & 0o044]
    assert readable == [], f"left behind, readable by others: {readable}"
    pyinfra(host)
    msg = message(f"{USER}@{DOMAIN}", f"{USER}@{DOMAIN}")
    submit_when_up(host, USER, sandbox.sandbox_password(), msg)
    wait_for_delivery(host, USER, msg["Subject"])
    assert pyinfra(host).changed() == []


@pytest.mark.slow  # 15 min; in every run, test_backup's killed backup and test_recovery's checked restores
@pytest.mark.parametrize("point", range(10))
def test_interruption_sweep(make_host, sources, point):
    """Ten points spread over a deploy from bare (about 50 s on the CI machine): 3 s to 41 s."""
    interrupted_deploy_recovers(make_host(), 3 + point * 4.2)
