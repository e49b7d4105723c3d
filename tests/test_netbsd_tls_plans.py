"""NetBSD command plans for TLS on every hop (no NetBSD host needed; see test_netbsd_plans.py).

pkgsrc's qmail has `tls` among its default options (mail/qmail/options.mk): the binary
package from pkgin has qmail-remote's TLS, so it is only verified. spamdyke's `tls` is not
a default (mail/spamdyke/options.mk suggests nothing): pkgsrc builds it, and the built
program's version line must say "+TLS". Then port 25 runs spamdyke as qmaild with the group
qmailtls and the TLS policy in OPENSSL_CONF, stunnel serves 587 and 465, the key is
640 root:qmailtls, and qmail-remote's control/tlshosts and control/notlshosts are whole
directories.
"""

from __future__ import annotations

import subprocess
from unittest import mock

import pytest
from pyinfra.api.exceptions import OperationError

from harness.netbsd_host import NetBSDHost, bare_plan, converged_host, deploy_data
from harness.plan_harness import commands_of, index, plan_deploy, plan_operation, uploaded
from qmailhost import platform as platforms
from qmailhost.backends import pkgsrc
from qmailhost.registry import needs
from qmailhost.settings import Settings
from tasks.health import SETTINGS_COPY

QMAIL_CHECK = "pkg_info -Q PKG_OPTIONS qmail"
SPAMDYKE_CHECK = 'case "$(/usr/pkg/bin/spamdyke -v 2>&1 </dev/null | head -1)" in *+TLS*)'
KEY = "/usr/pkg/etc/qmailhost/tls/key.pem"


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


@pytest.fixture(scope="module")
def bare():
    return bare_plan()


# --- the packages: qmail's tls verified, spamdyke's built and proven


def test_a_bare_host_checks_qmails_tls_and_builds_spamdyke_with_tls(bare):
    host, plan = bare
    names = [name for name, _ in plan]
    commands = commands_of(plan)
    assert "Check that qmail has its default option(s) tls" in names
    assert "Build spamdyke with tls (/etc/mk.conf)" in names
    assert "Check that spamdyke says +TLS" in names
    # qmail comes with qmail-run, then its recorded options are checked before anything uses it.
    assert index(commands, "qmail-run ucspi-tcp") < index(commands, QMAIL_CHECK) \
        < index(commands, "/etc/rc.d/qmailsend start")
    # spamdyke: the option line, the build, the proof, then port 25.
    assert "echo 'PKG_OPTIONS.spamdyke+=\ttls\t# managed by qmailhost' >> /etc/mk.conf" in commands
    assert index(commands, "PKG_OPTIONS.spamdyke+=") \
        < index(commands, "make -C /usr/pkgsrc/mail/spamdyke install && make -C /usr/pkgsrc/mail/spamdyke clean") \
        < index(commands, SPAMDYKE_CHECK) < index(commands, "/etc/rc.d/qmailsmtpd start")
    # Applied, the host has what was asked: qmail with tls, spamdyke built with tls and saying so.
    host = host.copy()
    host.apply(plan)
    assert "tls" in host.packages["qmail"] and host.packages["spamdyke"] == ["tls"]
    assert "+TLS" in host.spamdyke_version()


def test_the_runtime_checks_stop_the_run_when_the_options_are_missing(bare):
    # The checks planned on a bare host run after the installs: the model stops as the host would.
    host, plan = bare
    without = host.copy()
    with mock.patch.dict("harness.netbsd_host.BINARY_OPTIONS", {"qmail": ["eai", "syncdir"]}), \
            pytest.raises(AssertionError, match="the run stops: qmail is installed without the pkgsrc option tls"):
        without.apply(plan)
    untaken = host.copy()
    untaken.spamdyke_tls_compiled = False
    with pytest.raises(AssertionError, match="the run stops: spamdyke has no TLS compiled in"):
        untaken.apply(plan)


def test_a_qmail_without_tls_stops_the_run_naming_the_fix():
    host = converged_host()
    host.packages["qmail"] = ["eai", "syncdir"]  # built by hand, without pkgsrc's default
    with pytest.raises(OperationError) as refused:
        plan_deploy(deploy_data(), host.answer)
    message = str(refused.value)
    assert "\n" not in message
    assert message == ("qmail is installed without the pkgsrc option tls (a pkgsrc default): rebuild it with it "
                       "(add PKG_OPTIONS.qmail+=tls to /etc/mk.conf, then make -C /usr/pkgsrc/mail/qmail replace "
                       "clean) or reinstall the binary package from pkgin")


def test_a_spamdyke_whose_tls_did_not_take_stops_the_run():
    host = converged_host()
    host.spamdyke_tls_compiled = False  # PKG_OPTIONS says tls, the program has none
    with pytest.raises(OperationError) as refused:
        plan_deploy(deploy_data(), host.answer)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("spamdyke has no TLS compiled in (port 25 could not offer STARTTLS): "
                              "`/usr/pkg/bin/spamdyke -v 2>&1 </dev/null | head -1` says 'spamdyke 5.0.1+CONFIGTEST")


def test_a_binary_spamdyke_from_pkgin_is_rebuilt_with_tls():
    host = converged_host()
    host.packages["spamdyke"] = []  # e.g. `pkgin upgrade` replaced the build with the binary package
    plan = plan_deploy(deploy_data(), host.answer)
    # The old build's "no +TLS" does not stop the run: the rebuild comes first, then the proof.
    assert [name for name, _ in plan] == ["Build and install spamdyke from pkgsrc", "Check that spamdyke says +TLS"]
    assert commands_of(plan)[0] == "make -C /usr/pkgsrc/mail/spamdyke replace && make -C /usr/pkgsrc/mail/spamdyke clean"
    assert commands_of(plan)[1].startswith(SPAMDYKE_CHECK)
    host.apply(plan)
    assert plan_deploy(deploy_data(), host.answer) == []


# --- port 25: spamdyke's STARTTLS as qmaild:qmailtls, the policy through OPENSSL_CONF


def test_qmailsmtpd_carries_openssl_conf_and_the_qmailtls_group(bare):
    _, plan = bare
    rc_conf = uploaded(plan, "/etc/rc.conf.d/qmailsmtpd")
    # qmail-run's script runs `env - ${qmailsmtpd_postenv} ...`: the whole environment spamdyke gets
    # (and qmail-smtpd after it: QMAILQUEUE, tasks/dkim.py's Authentication-Results filter).
    assert 'qmailsmtpd_postenv="OPENSSL_CONF=/usr/pkg/etc/qmailhost/tls/openssl-policy.cnf ' \
           'QMAILQUEUE=/usr/pkg/etc/qmailhost/dkim/qmail-queue"\n' in rc_conf
    assert 'qmailsmtpd_tcpflags="-v -R -H -l mail.example.org -u $(id -u qmaild) ' \
           '-g $(getent group qmailtls | cut -d: -f3)"\n' in rc_conf
    assert 'qmailsmtpd_presmtpd="/usr/pkg/bin/spamdyke -f /usr/pkg/etc/qmailhost/spamdyke-smtp.conf"\n' in rc_conf
    assert rc_conf.endswith('qmailsmtpd_tls="NO"\n')  # qmail-run's own TLS (sslserver) stays off
    policy = uploaded(plan, "/usr/pkg/etc/qmailhost/tls/openssl-policy.cnf")
    assert "MinProtocol = TLSv1.2\n" in policy
    smtp_conf = uploaded(plan, "/usr/pkg/etc/qmailhost/spamdyke-smtp.conf")
    assert "tls-level=smtp\n" in smtp_conf
    assert "tls-certificate-file=/usr/pkg/etc/qmailhost/tls/cert.pem\n" in smtp_conf
    assert f"tls-privatekey-file={KEY}\n" in smtp_conf


def test_the_group_exists_before_the_key_is_given_to_it_and_before_port_25_starts(bare):
    host, plan = bare
    commands = commands_of(plan)
    assert index(commands, "groupadd qmailtls") < index(commands, f"chgrp qmailtls {KEY}.qmailhost-new") \
        < index(commands, "/etc/rc.d/qmailsmtpd start")
    assert f"chown root:qmailtls {KEY} && chmod 640 {KEY}" not in commands  # made so, not fixed after
    host = host.copy()
    host.apply(plan)
    assert "qmailtls" in host.groups
    assert (host.files[KEY]["mode"], host.files[KEY]["user"], host.files[KEY]["group"]) == ("640", "root", "qmailtls")
    assert (host.tree[KEY]["mode"], host.tree[KEY]["group"]) == ("640", "qmailtls")


def test_the_modern_policy_reaches_spamdyke_and_stunnel_and_restarts_only_stunnel_and_dovecot():
    host = converged_host()
    plan = plan_deploy(deploy_data(tls_policy="modern"), host.answer)
    assert "MinProtocol = TLSv1.3\n" in uploaded(plan, "/usr/pkg/etc/qmailhost/tls/openssl-policy.cnf")
    assert "sslVersionMin = TLSv1.3\n" in uploaded(plan, "/usr/pkg/etc/stunnel/stunnel.conf")
    restarted = [c for c in commands_of(plan) if c.endswith(" restart")]
    # (Dovecot's own config carries the policy: tests/test_netbsd_imap_plans.py)
    assert restarted == ["/etc/rc.d/stunnel restart", "/etc/rc.d/dovecot restart"], \
        "spamdyke reads the policy per connection"
    host.apply(plan)
    assert plan_deploy(deploy_data(tls_policy="modern"), host.answer) == []


# --- stunnel: 587 STARTTLS and 465 implicit TLS


def test_stunnel_serves_submissions_on_465(bare):
    _, plan = bare
    stunnel = uploaded(plan, "/usr/pkg/etc/stunnel/stunnel.conf")
    assert "[submission]\naccept = 0.0.0.0:587\nconnect = 127.0.0.1:26\nprotocol = smtp\n" in stunnel
    assert stunnel.endswith("\n[submissions]\naccept = 0.0.0.0:465\nconnect = 127.0.0.1:26\n")
    assert stunnel.count("\nprotocol = smtp\n") == 1, "465 speaks TLS from the first byte"
    assert "cert = /usr/pkg/etc/qmailhost/tls/cert.pem\nkey = /usr/pkg/etc/qmailhost/tls/key.pem\n" in stunnel


def test_no_submissions_section_when_submissions_port_is_null():
    host = NetBSDHost()
    plan = plan_deploy(deploy_data(submissions_port=None), host.answer)
    stunnel = uploaded(plan, "/usr/pkg/etc/stunnel/stunnel.conf")
    assert "[submissions]" not in stunnel and ":465" not in stunnel
    assert "[submission]\naccept = 0.0.0.0:587\n" in stunnel
    host.apply(plan)
    assert plan_deploy(deploy_data(submissions_port=None), host.answer) == []
    # Turning 465 on again rewrites stunnel's config and restarts stunnel only.
    back = plan_deploy(deploy_data(), host.answer)
    assert [name for name, _ in back] == ["Write stunnel's config", "Run stunnel (restart on change)", SETTINGS_COPY]
    assert "[submissions]\naccept = 0.0.0.0:465\n" in uploaded(back, "/usr/pkg/etc/stunnel/stunnel.conf")


def test_submissions_in_tmda_mode_points_at_tmda_ofmipd():
    host = converged_host()
    plan = plan_deploy(deploy_data(submission="tmda"), host.answer)
    stunnel = uploaded(plan, "/usr/pkg/etc/stunnel/stunnel.conf")
    assert stunnel.count("connect = 127.0.0.1:8025\n") == 2


# --- outbound: qmail-remote's control/tlshosts and control/notlshosts


def test_control_tlshosts_and_notlshosts_are_made_and_kept(bare):
    host, plan = bare
    commands = commands_of(plan)
    for directory in ("/var/qmail/control/tlshosts", "/var/qmail/control/notlshosts"):
        assert f"mkdir -p {directory}" in commands
        assert f"chown root:wheel {directory} && chmod 755 {directory}" in commands
    host = host.copy()
    host.apply(plan)
    assert host.dirs["/var/qmail/control/tlshosts"] == {"mode": 755, "user": "root", "group": "wheel"}


@pytest.fixture
def ca_file(tmp_path):
    key, cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=Test CA",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert


def test_tlshosts_and_notlshosts_are_written_and_strays_removed(ca_file):
    host = converged_host()
    host.files["/var/qmail/control/notlshosts/old.example"] = {"sha256": "by hand", "mode": "644", "user": "root",
                                                               "group": "wheel"}
    settings = {"tlshosts": {"mx.example.net": str(ca_file)}, "notlshosts": ["mx.broken.example"]}
    plan = plan_deploy(deploy_data(**settings), host.answer)
    assert [name for name, _ in plan] == ["Outbound TLS: no TLS to mx.broken.example",
                                          "Outbound TLS: verify mx.example.net's certificate",
                                          "Outbound TLS: forget old.example (not in the inventory)", SETTINGS_COPY]
    assert uploaded(plan, "/var/qmail/control/tlshosts/mx.example.net.pem") == ca_file.read_text()
    assert uploaded(plan, "/var/qmail/control/notlshosts/mx.broken.example") == ""
    assert "rm -f /var/qmail/control/notlshosts/old.example" in commands_of(plan)
    assert not [c for c in commands_of(plan) if c.endswith(" restart")], "qmail-remote reads them per delivery"


def test_a_converged_netbsd_host_plans_nothing_in_every_mode():
    for mode in ("ofmipd", "spamdyke", "tmda"):
        converged_host(submission=mode)
    converged_host(submissions_port=None, tls_policy="modern")


# --- the two pkgsrc operations on their own: facts in, commands out


NETBSD = platforms.netbsd("10")
REPORT = "/usr/pkg/bin/spamdyke -v 2>&1 </dev/null | head -1"


def facts(**answers):
    asked = {}

    def answer(name, kwargs):
        asked[name] = kwargs
        return answers[name]

    return answer, asked


def test_the_components_name_what_pkgsrc_does_by_default_and_what_it_builds():
    netbsd = needs(NETBSD, Settings.from_host_data(deploy_data()))
    assert netbsd.pkgsrc_default_options == (("mail/qmail", "qmail", ("tls",)),)
    assert ("mail/spamdyke", "spamdyke", ("tls",)) in netbsd.pkgsrc_builds
    assert ("mail/mess822", "mess822", ("sasl",)) in netbsd.pkgsrc_builds
    assert "spamdyke" not in netbsd.packages
    assert [(p, r, m) for p, r, m, _ in netbsd.pkgsrc_proofs] == [("spamdyke", REPORT, "+TLS")]
    debian = needs(platforms.debian("13"), Settings.from_host_data(deploy_data()))
    assert (debian.pkgsrc_builds, debian.pkgsrc_default_options, debian.pkgsrc_proofs) == ((), (), ())


@pytest.mark.parametrize("state, expected", [
    ({"installed": True, "options": ["eai", "syncdir", "tls"], "pkgsrc": False}, "noop"),
    ({"installed": True, "options": ["eai", "syncdir"], "pkgsrc": True}, "refused"),
    ({"installed": False, "options": [], "pkgsrc": False}, "checked when it runs"),
])
def test_has_default_options(state, expected):
    answer, asked = facts(PackageOptions=state)
    kwargs = {"pkgpath": "mail/qmail", "package": "qmail", "options": ["tls"]}
    if expected == "refused":
        with pytest.raises(OperationError, match="^qmail is installed without the pkgsrc option tls"):
            plan_operation(pkgsrc.has_default_options, kwargs, answer)
        return
    commands, noop = plan_operation(pkgsrc.has_default_options, kwargs, answer)
    assert asked["PackageOptions"] == {"package": "qmail", "pkgpath": "mail/qmail"}
    if expected == "noop":
        assert (commands, noop) == ([], "qmail is installed with tls")
    else:
        assert commands == [pkgsrc._has_options_command(
            "qmail", ["tls"], pkgsrc.default_options_refusal("mail/qmail", "qmail", ["tls"]))]


@pytest.mark.parametrize("line, options, expected", [
    ("spamdyke 5.0.1+TLS+CONFIGTEST+DEBUG (C)2015", ["tls"], "noop"),
    ("spamdyke 5.0.1+CONFIGTEST+DEBUG (C)2015", ["tls"], "refused"),
    ("spamdyke 5.0.1+CONFIGTEST+DEBUG (C)2015", [], "checked when it runs"),  # the build comes first
    (None, [], "checked when it runs"),
])
def test_reports(line, options, expected):
    answer, asked = facts(ProgramReport=line, PackageOptions={"installed": line is not None, "options": options,
                                                               "pkgsrc": True})
    kwargs = {"package": "spamdyke", "report": REPORT, "marker": "+TLS", "meaning": "no TLS",
              "pkgpath": "mail/spamdyke", "options": ("tls",)}
    if expected == "refused":
        with pytest.raises(OperationError, match=r"^no TLS: `.*` says 'spamdyke 5\.0\.1\+CONFIGTEST"):
            plan_operation(pkgsrc.reports, kwargs, answer)
        return
    commands, noop = plan_operation(pkgsrc.reports, kwargs, answer)
    assert asked["ProgramReport"] == {"package": "spamdyke", "report": REPORT}
    if expected == "noop":
        assert (commands, noop) == ([], "spamdyke says +TLS")
    else:
        assert commands == [f'case "$({REPORT})" in *+TLS*) ;; *) echo \'no TLS: `{REPORT}` does not say '
                            "'\"'\"'+TLS'\"'\"'' >&2; exit 1 ;; esac"]


def test_the_facts_ask_pkg_info_and_the_program():
    assert pkgsrc.PackageOptions().command("qmail", "mail/qmail") == (
        '[ -f /usr/pkgsrc/mail/qmail/Makefile ] && echo pkgsrc; pkg_info -e qmail >/dev/null 2>&1 && echo installed '
        '&& echo "options $(pkg_info -Q PKG_OPTIONS qmail)"; true')
    assert pkgsrc.ProgramReport().command("spamdyke", REPORT) == (
        f'pkg_info -e spamdyke >/dev/null 2>&1 && echo "report $({REPORT})"; true')
    assert pkgsrc.ProgramReport().process(["report spamdyke 5.0.1+TLS"]) == "spamdyke 5.0.1+TLS"
    assert pkgsrc.ProgramReport().process([]) is None


def test_a_key_left_readable_by_its_owner_only_is_given_back_to_the_tls_group():
    host = converged_host()
    for listing in (host.files[KEY], host.tree[KEY]):
        listing.update(mode="600", group="wheel")
    commands = commands_of(plan_deploy(deploy_data(), host.answer))
    assert commands == [f"chown root:qmailtls {KEY} && chmod 640 {KEY}"]
