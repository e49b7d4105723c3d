"""NetBSD command plans: facts in, exact commands out (no NetBSD host needed).

1. Every NetBSD operation, from the cases in tests/plans/netbsd/OPERATION.yaml: a bare
   host and a converged one (which must plan no command and say why), plus the
   cases in between. A case may name the platform whose data fills some arguments
   (kwargs_from_platform) and check the arguments a fact was asked with (fact_args).
2. The whole deploy.py on a model NetBSD host (tests/netbsd_host.py), loaded as the
   pyinfra CLI loads it: a bare host in mode "ofmipd", the converged host, then the
   switches to "spamdyke" and "tmda" and back, and a TMDA-era host's conversion.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from unittest import mock

import pytest
import yaml
from passlib.hash import sha1_crypt

from harness.netbsd_host import HEALTH_PACKAGES, SPAM_PACKAGES, NetBSDHost, converged_host, deploy_data
from harness.plan_harness import commands_of, index, plan_deploy, plan_operation, uploaded
from qmailhost import ops
from qmailhost import platform as platforms
from tasks.health import SETTINGS_COPY

CASES = Path(__file__).resolve().parent / "plans" / "netbsd"


def _cases():
    for path in sorted(CASES.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        for case in spec["cases"]:
            yield pytest.param(spec, case, id=f"{path.stem}: {case['name']}")


@pytest.mark.parametrize("spec, case", list(_cases()))
def test_operation_plan(spec, case):
    module_name, op_name = spec["operation"].rsplit(".", 1)
    op = getattr(importlib.import_module(module_name), op_name)
    netbsd = platforms.netbsd("10")
    kwargs = dict(case["kwargs"])
    for argument, field in spec.get("kwargs_from_platform", {}).items():
        kwargs[argument] = getattr(netbsd, field)
    asked = {}

    def answer(name, fact_kwargs):
        asked[name] = fact_kwargs
        value = case["facts"][name]
        if name == "TmdaPieces":
            value = [tuple(piece) for piece in value]
        if name == "HostState":
            value = {"stamps": {}, "accounts": {}, "cert": None, **value}
        return value

    patches = [mock.patch.dict(platforms._DETECTED, {"@fake/mail.example.org": netbsd})] \
        if spec.get("platform") == "netbsd" else []
    if "fixed_salt" in spec:
        patches.append(mock.patch.dict(ops._SCHEMES, {"sha1_crypt": sha1_crypt.using(salt=spec["fixed_salt"])}))
    for patch in patches:
        patch.start()
    try:
        if "exception" in case:
            with pytest.raises(Exception) as raised:
                plan_operation(op, kwargs, answer)
            assert str(raised.value) == case["exception"]
            return
        commands, noop = plan_operation(op, kwargs, answer)
    finally:
        for patch in patches:
            patch.stop()
    if "commands_count" in case:
        assert len(commands) == case["commands_count"]
    else:
        assert commands == case["commands"]
    if not commands:
        assert noop == case["noop"]
    for name, expected in case.get("fact_args", {}).items():
        assert asked[name] == expected


# --- the whole deploy on a model NetBSD host

LINUX_ONLY = ("apt", "dpkg", "systemctl", "useradd -r", "groupadd -r", "update-rc.d", "/etc/service",
              "svc ", "svok", "chpasswd -e", "getent shadow", "sha256sum", "stat -c", "/etc/init.d",
              "root:root", "/usr/local/")


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("QMAILHOST_TEST_PASSWORD", "correct horse")


def assert_netbsd_only(plan) -> None:
    for _, commands in plan:
        for command in commands:
            text = command if isinstance(command, str) else command[2]
            for linux in LINUX_ONLY:
                assert linux not in text, f"{linux!r} in a NetBSD command: {text[:200]}"


@pytest.fixture(scope="module")
def bare_plan():
    host = NetBSDHost()
    with mock.patch.dict("os.environ", {"QMAILHOST_TEST_PASSWORD": "correct horse"}):
        plan = plan_deploy(deploy_data(), host.answer)
    return host, plan


def test_bare_host_in_ofmipd_mode(bare_plan):
    _, plan = bare_plan
    commands = commands_of(plan)
    assert_netbsd_only(plan)
    # spamdyke is not a binary package: pkgsrc builds it with tls (tests/test_netbsd_tls_plans.py).
    assert commands[0] == ("PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install "
                           "python313 checkpassword py313-dkim py313-spf " + " ".join(HEALTH_PACKAGES) +
                           " dovecot qmail-run ucspi-tcp unbound " + " ".join(SPAM_PACKAGES) + " stunnel")
    # Each option is in /etc/mk.conf before its package is built, and the build cleans up after itself.
    for package, option in (("mess822", "sasl"), ("spamdyke", "tls")):
        assert index(commands, f"PKG_OPTIONS.{package}+=\t{option}") \
            < index(commands, f"make -C /usr/pkgsrc/mail/{package} install")
        assert f"make -C /usr/pkgsrc/mail/{package} install && make -C /usr/pkgsrc/mail/{package} clean" in commands
    # Users before anything runs as them; NetBSD flags.
    assert "useradd -g nofiles -d /var/qmail -s /sbin/nologin qmaild" in commands
    assert "useradd -g =uid -d /home/alice -s /sbin/nologin -m alice" in commands
    assert "chown root:ofmipd /usr/pkg/bin/checkpassword && chmod 4750 /usr/pkg/bin/checkpassword" in commands
    # postfix gives port 25 up before qmail-smtpd takes it.
    assert index(commands, "/etc/rc.d/postfix onestop") < index(commands, "/etc/rc.d/qmailsmtpd start")
    # Every service: its rc.conf.d file, then its start; the listener before stunnel.
    for service in ("qmailsend", "qmailsmtpd", "qmailofmipd", "stunnel"):
        assert index(commands, f"upload /etc/rc.conf.d/{service}") < index(commands, f"/etc/rc.d/{service} start")
    assert index(commands, "/etc/rc.d/qmailofmipd start") < index(commands, "/etc/rc.d/stunnel start")
    assert index(commands, "/usr/pkg/bin/tcprules /var/qmail/control/tcprules/ofmip.cdb") \
        < index(commands, "/etc/rc.d/qmailofmipd start")
    assert not [c for c in commands if c.endswith(" restart")], "a bare host restarts nothing"
    assert "/etc/rc.d/tofmipd start" not in commands


def test_bare_host_files(bare_plan):
    _, plan = bare_plan
    assert uploaded(plan, "/etc/rc.conf.d/qmailofmipd") == """\
# qmailofmipd: mail submission on 127.0.0.1:26 behind stunnel; mode 'ofmipd': ofmipd built with the SMTP AUTH patch does AUTH itself
# Managed by qmailhost: every variable is set, whatever the rc.d defaults.
qmailofmipd=YES
qmailofmipd_postenv=""
qmailofmipd_datalimit="64000000"
qmailofmipd_pretcpserver=""
qmailofmipd_tcpserver="/usr/pkg/bin/tcpserver"
qmailofmipd_tcpflags="-v -R -H -l mail.example.org -u $(id -u ofmipd) -g $(id -g ofmipd)"
qmailofmipd_tcphost="127.0.0.1"
qmailofmipd_tcpport="26"
qmailofmipd_tcprules="/var/qmail/control/tcprules/ofmip"
qmailofmipd_autocdb="NO"
qmailofmipd_precheckpassword=""
qmailofmipd_checkpassword=""
qmailofmipd_preofmipd="env QMAILQUEUE=/usr/pkg/etc/qmailhost/submission-queue timeout 900"
qmailofmipd_ofmipdcmd="/usr/pkg/bin/ofmipd"
qmailofmipd_postofmipd="'' mail.example.org /usr/pkg/etc/qmailhost/login-brake checkpassword /usr/pkg/bin/checkpassword /usr/pkg/etc/qmailhost/only-mail-accounts"
qmailofmipd_log="YES"
qmailofmipd_logcmd="logger -t nbqmail/ofmipd -p mail.info"
qmailofmipd_tls="NO"
"""
    assert uploaded(plan, "/etc/rc.conf.d/qmailsmtpd") == """\
# qmailsmtpd: qmail-smtpd on port 25 behind spamdyke's filters
# Managed by qmailhost: every variable is set, whatever the rc.d defaults.
qmailsmtpd=YES
qmailsmtpd_postenv="OPENSSL_CONF=/usr/pkg/etc/qmailhost/tls/openssl-policy.cnf QMAILQUEUE=/usr/pkg/etc/qmailhost/dkim/qmail-queue"
qmailsmtpd_datalimit="64000000"
qmailsmtpd_pretcpserver=""
qmailsmtpd_tcpserver="/usr/pkg/bin/tcpserver"
qmailsmtpd_tcpflags="-v -R -H -l mail.example.org -u $(id -u qmaild) -g $(getent group qmailtls | cut -d: -f3)"
qmailsmtpd_tcphost="0"
qmailsmtpd_tcpport="25"
qmailsmtpd_tcprules="/var/qmail/control/tcprules/smtp"
qmailsmtpd_autocdb="NO"
qmailsmtpd_presmtpd="/usr/pkg/bin/spamdyke -f /usr/pkg/etc/qmailhost/spamdyke-smtp.conf"
qmailsmtpd_smtpdcmd="/usr/pkg/bin/qmail-smtpd"
qmailsmtpd_postsmtpd=""
qmailsmtpd_log="YES"
qmailsmtpd_logcmd="logger -t nbqmail/smtpd -p mail.info"
qmailsmtpd_tls="NO"
"""
    assert uploaded(plan, "/etc/rc.conf.d/qmailsend") == """\
# qmailsend: qmail-send, delivering the queue (locally to ./Maildir/)
# Managed by qmailhost: every variable is set, whatever the rc.d defaults.
qmailsend=YES
qmailsend_postenv="PATH=/usr/pkg/bin:/usr/bin:/bin QMAILREMOTE=/usr/pkg/etc/qmailhost/dkim/qmail-remote"
qmailsend_defaultdelivery="./Maildir/"
qmailsend_log="YES"
qmailsend_logcmd="logger -t nbqmail/send -p mail.info"
"""
    assert uploaded(plan, "/etc/rc.conf.d/stunnel") == """\
# stunnel: TLS on the submission ports
# Managed by qmailhost: every variable is set, whatever the rc.d defaults.
stunnel=YES
stunnel_flags="/usr/pkg/etc/stunnel/stunnel.conf"
"""
    assert uploaded(plan, "/etc/rc.conf.d/postfix").endswith("\npostfix=NO\n")
    stunnel = uploaded(plan, "/usr/pkg/etc/stunnel/stunnel.conf")
    assert "foreground = no\n" in stunnel and "setuid = stunnel\nsetgid = qmailtls\n" in stunnel
    assert "connect = 127.0.0.1:26\n" in stunnel and "cert = /usr/pkg/etc/qmailhost/tls/cert.pem\n" in stunnel
    assert uploaded(plan, "/var/qmail/control/concurrencyincoming") == "20\n"
    assert uploaded(plan, "/var/qmail/control/concurrencysubmission") == "20\n"
    assert "sendmail\t/usr/pkg/bin/sendmail\n" in uploaded(plan, "/etc/mailer.conf")
    password = next(c[1] for _, commands in plan for c in commands
                    if isinstance(c, list) and c[2] == "/root/.qmailhost-chpasswd-alice")
    assert password.startswith("alice:$sha1$500000$") and "correct horse" not in str(plan)


def test_converged_host_plans_nothing(bare_plan):
    host, plan = bare_plan
    host = host.copy()
    host.apply(plan)
    assert plan_deploy(deploy_data(), host.answer) == []


def test_switch_to_spamdyke_changes_only_the_submission_service():
    host = converged_host(submission="ofmipd")
    plan = plan_deploy(deploy_data(submission="spamdyke"), host.answer)
    assert_netbsd_only(plan)
    assert [name for name, _ in plan] == [
        "Remove /usr/pkg/etc/qmailhost/submission-queue (mode ofmipd)",
        "Remove /usr/pkg/etc/qmailhost/senders.json (mode ofmipd)",
        "Write /usr/pkg/etc/qmailhost/spamdyke-ofmipd.conf",
        "Configure qmailofmipd (/etc/rc.conf.d/qmailofmipd)",
        "Run qmailofmipd (restart on change)",
        "Record the submission mode",
        SETTINGS_COPY,  # (the host's scheduled checks read the mode too)
    ]
    commands = commands_of(plan)
    assert "/etc/rc.d/qmailofmipd restart" in commands
    rc_conf = uploaded(plan, "/etc/rc.conf.d/qmailofmipd")
    assert 'qmailofmipd_preofmipd="/usr/pkg/bin/spamdyke -f /usr/pkg/etc/qmailhost/spamdyke-ofmipd.conf"\n' in rc_conf
    assert 'qmailofmipd_postofmipd=""\n' in rc_conf
    assert ("smtp-auth-command=/usr/pkg/etc/qmailhost/login-brake checkpassword /usr/pkg/bin/checkpassword "
            "/usr/pkg/etc/qmailhost/only-mail-accounts\n") in uploaded(plan, "/usr/pkg/etc/qmailhost/spamdyke-ofmipd.conf")
    host.apply(plan)
    assert plan_deploy(deploy_data(submission="spamdyke"), host.answer) == []
    back = plan_deploy(deploy_data(submission="ofmipd"), host.answer)
    assert [name for name, _ in back] == [
        "Remove /usr/pkg/etc/qmailhost/spamdyke-ofmipd.conf (mode spamdyke)",
        "Write /usr/pkg/etc/qmailhost/submission-queue",
        "Write /usr/pkg/etc/qmailhost/senders.json",
        "Configure qmailofmipd (/etc/rc.conf.d/qmailofmipd)",
        "Run qmailofmipd (restart on change)",
        "Record the submission mode",
        SETTINGS_COPY,
    ]


def test_switch_to_tmda_restores_the_archive_and_points_stunnel_at_8025():
    host = converged_host(submission="ofmipd")
    host.tmda_archive = {"archive": "/var/lib/qmailhost/tmda-archive/20240101T000000Z/pieces.tar",
                         "restored": False, "pieces": [("config", "/usr/pkg/etc/tmda"), ("userdir", "/home/alice/.tmda"),
                                                       ("package", "tmda")]}
    plan = plan_deploy(deploy_data(submission="tmda"), host.answer)
    assert_netbsd_only(plan)
    commands = commands_of(plan)
    assert commands[0] == "PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install tmda"
    restore = ("tar -C / -xpf /var/lib/qmailhost/tmda-archive/20240101T000000Z/pieces.tar "
               "&& touch /var/lib/qmailhost/tmda-archive/20240101T000000Z/restored")
    assert index(commands, restore) < index(commands, "/etc/rc.d/tofmipd start")
    assert "sh /var/lib/qmailhost/tmda/netbsd-retire.sh" not in commands
    assert uploaded(plan, "/etc/rc.conf.d/tofmipd").endswith('tofmipd=YES\ntofmipd_flags="-p 127.0.0.1:8025"\n')
    assert uploaded(plan, "/etc/rc.conf.d/qmailofmipd").endswith("\nqmailofmipd=NO\n")
    assert index(commands, "/etc/rc.d/tofmipd start") < index(commands, "/etc/rc.d/qmailofmipd onestop")
    assert "connect = 127.0.0.1:8025\n" in uploaded(plan, "/usr/pkg/etc/stunnel/stunnel.conf")
    assert index(commands, "/etc/rc.d/tofmipd start") < index(commands, "/etc/rc.d/stunnel restart")
    restarted = [c for c in commands if c.endswith(" restart")]
    assert restarted == ["/etc/rc.d/stunnel restart"], "only stunnel's config changed"
    host.apply(plan)
    assert plan_deploy(deploy_data(submission="tmda"), host.answer) == []


def test_tmda_era_host_is_converted_and_back():
    host = NetBSDHost()
    host.packages["tmda"] = []
    host.rc_scripts.add("tofmipd")
    host.running.add("tofmipd")
    host.tmda_pieces = [("rcscript", "/etc/rc.d/tofmipd"), ("rcconf", "/etc/rc.conf.d/tofmipd"),
                        ("stunnel", "/usr/pkg/etc/stunnel/stunnel.conf"), ("config", "/usr/pkg/etc/tmda"),
                        ("dotqmail", "/home/alice/.qmail"), ("package", "tmda"), ("user", "tofmipd")]
    plan = plan_deploy(deploy_data(), host.answer)
    assert_netbsd_only(plan)
    commands = commands_of(plan)
    # Retired (archived, then removed) before stunnel is started on 587.
    assert index(commands, "sh /var/lib/qmailhost/tmda/netbsd-retire.sh") < index(commands, "/etc/rc.d/stunnel start")
    host.apply(plan)
    assert "tofmipd" not in host.running and "tmda" not in host.packages
    assert plan_deploy(deploy_data(), host.answer) == []
    # Rolling back to TMDA puts the archived configuration back.
    back = commands_of(plan_deploy(deploy_data(submission="tmda"), host.answer))
    assert "PKG_RCD_SCRIPTS=YES /usr/pkg/bin/pkgin -y install tmda" in back
    assert any(c.startswith("tar -C / -xpf /var/lib/qmailhost/tmda-archive/") for c in back)


def test_the_netbsd_platform_is_detected_from_facts():
    facts = {"Os": "NetBSD", "OsVersion": "9.3"}
    host = mock.Mock(get_fact=lambda cls: facts[cls.__name__])
    host.name = "mail.example.org"
    with mock.patch.object(platforms, "host", host), mock.patch.dict(platforms._DETECTED):
        detected = platforms.detect()
        assert platforms.current() is detected
    assert (detected.name, detected.release, detected.package_manager, detected.service_backend) == \
        ("netbsd", "9", "pkgin", "rcd")
    facts["OsVersion"] = "8.2"
    with mock.patch.object(platforms, "host", host), pytest.raises(Exception, match="NetBSD 8.2 is not supported"):
        platforms.detect()


# --- the running host is the truth: drift is repaired in the file and in the service


def test_a_hand_edited_rc_conf_is_rewritten_and_its_service_restarted():
    host = converged_host(submission="ofmipd")
    path = "/etc/rc.conf.d/qmailofmipd"
    host.contents[path] = host.contents[path].replace('tcphost="127.0.0.1"', 'tcphost="0.0.0.0"')
    host.files[path]["sha256"] = "edited by hand"
    plan = plan_deploy(deploy_data(), host.answer)
    assert [name for name, _ in plan] == ["Configure qmailofmipd (/etc/rc.conf.d/qmailofmipd)",
                                          "Run qmailofmipd (restart on change)"]
    assert "/etc/rc.d/qmailofmipd restart" in commands_of(plan)
    host.apply(plan)
    assert plan_deploy(deploy_data(), host.answer) == []


def test_a_pair_made_anew_on_the_host_is_served_by_stunnel():
    host = converged_host(submission="ofmipd")
    host.cert = {**host.cert, "sha256": "made by hand"}  # e.g. openssl run by hand, or a restore
    host.files["/usr/pkg/etc/qmailhost/tls/cert.pem"]["sha256"] = "made by hand"
    plan = plan_deploy(deploy_data(), host.answer)
    assert [name for name, _ in plan] == ["Run stunnel (restart on change)", "Reload dovecot"]
    host.apply(plan)
    assert plan_deploy(deploy_data(), host.answer) == []


def test_a_self_signed_pair_near_expiry_is_renewed_and_served():
    host = converged_host(submission="ofmipd")
    host.cert = {**host.cert, "renew": True}
    plan = plan_deploy(deploy_data(), host.answer)
    assert [name for name, _ in plan] == ["Make a self-signed certificate for mail.example.org",
                                          "Run stunnel (restart on change)", "Reload dovecot"]
    commands = commands_of(plan)
    assert index(commands, "openssl req -x509") < index(commands, "/etc/rc.d/stunnel restart")
    host.apply(plan)
    assert plan_deploy(deploy_data(), host.answer) == [], "the new pair is recorded as the one stunnel serves"
