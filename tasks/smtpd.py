"""qmail-smtpd on port 25: mail from the Internet for the local domains.

tcpserver (0.0.0.0:25, rules in smtp.rules: relaying only from 127.0.0.1) runs
spamdyke's filters and STARTTLS (tasks/spamdyke.py), then qmail-smtpd, as qmaild with the group
that may read the TLS key (tasks/tls.py); the TLS policy reaches spamdyke's OpenSSL through
OPENSSL_CONF. TLS is opportunistic (RFC 3207): a sender without it is still accepted.
qmail-smtpd's own TLS (the qmail-tls patch, tasks/qmail.py) stays off: it offers STARTTLS only
with control/servercert.pem, which qmailhost never writes, so inbound TLS has one owner.
Control files, rules, spamdyke's config and the pair are read per connection: only a
changed service definition (run script, rc.conf.d file) restarts it. With
authentication_results, qmail-smtpd queues through tasks/dkim.py's filter (QMAILQUEUE), which
adds the DKIM and SPF results. Its status
checks: port 25 offers STARTTLS, takes mail for the local domains and refuses to relay
for a stranger.
"""

from pyinfra.api import deploy

from qmailhost import tcprules
from qmailhost.backends import rcd, services
from qmailhost.checks import ERROR, FOREIGN, OK, STRANGER, WARNING, reply_text, tls_context
from qmailhost.component import Component, Listener, Setting, TlsPort
from qmailhost.files import render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, port, whole_number
from tasks import dkim, spamdyke, tls


@deploy("smtpd")
def configure(platform: Platform, settings: Settings) -> None:
    cdb = tcprules.rules(platform, "smtp", render("smtpd/smtp.rules.j2", port=settings.smtp_port))
    config = spamdyke.smtp_config(platform, settings)
    program = spamdyke.program(platform)
    queue = dkim.inbound_queue(platform, settings)  # Authentication-Results, in front of qmail-queue
    env = f"OPENSSL_CONF={tls.policy_config_path(platform)}" + (f" QMAILQUEUE={queue}" if queue else "")
    services.declare(platform, services.Service(
        name="qmail-smtpd", description=f"qmail-smtpd on port {settings.smtp_port} behind spamdyke's filters",
        run=render("smtpd/qmail-smtpd.run.j2", port=settings.smtp_port, tcprules=cdb, hostname=settings.hostname,
                   connections=settings.smtp_connections, spamdyke=program, spamdyke_conf=config,
                   qmail_home=platform.qmail_home, key_group=tls.KEY_GROUP,
                   env=env),
        rcd=services.Rcd("qmailsmtpd", (
            *rcd.tcpserver(platform, settings.hostname, "qmaild", "0", settings.smtp_port, cdb, 64_000_000,
                           group=tls.KEY_GROUP, env=env),
            ("presmtpd", f"{program} -f {config}"),
            ("smtpdcmd", f"{platform.qmail_bin}/qmail-smtpd"),
            ("postsmtpd", ""),
            *rcd.logging("smtpd"),
            ("tls", "NO"),  # qmail-smtpd's own TLS: off, spamdyke does STARTTLS (as on Debian)
        )),
    ))


def check_smtp_offers_starttls(target):
    """Port 25 offers STARTTLS to senders (and still takes mail from those without it)."""
    with target.smtp(target.settings.smtp_port) as client:
        client.ehlo()
        offered = "starttls" in client.esmtp_features
    if not offered:
        return ERROR, ("port 25 offers no STARTTLS: mail arrives in plaintext (spamdyke built without TLS, "
                       "or it cannot read the TLS key)")
    with target.tls_session(TlsPort(target.settings.smtp_port, "SMTP", True), tls_context()) as client:
        version = client.sock.version()
    return OK, f"offers STARTTLS ({version})"


def check_smtp_refuses_relay(target):
    """Port 25 takes mail for the local domains and refuses to relay for a stranger."""
    local = f"postmaster@{target.settings.primary_domain}"
    with target.smtp(target.settings.smtp_port) as client:
        client.ehlo()
        code, reply = client.mail(STRANGER)
        if code != 250:
            return ERROR, f"MAIL FROM a stranger answered {code} {reply_text(reply)}"
        local_code, local_reply = client.rcpt(local)
        foreign_code, foreign_reply = client.rcpt(FOREIGN)
    if 200 <= foreign_code < 300:
        return ERROR, f"open relay: RCPT to a foreign domain accepted ({foreign_code}) from a stranger"
    if local_code != 250:
        return WARNING, f"every recipient refused, even {local} ({local_code} {reply_text(local_reply)})"
    if foreign_code < 500:
        return WARNING, f"relaying refused only temporarily ({foreign_code} {reply_text(foreign_reply)})"
    return OK, f"takes mail for {local}, refuses relaying ({foreign_code})"


COMPONENT = Component(
    name="smtpd",
    settings=(
        Setting("smtp_port", 25, port("smtp_port"), "qmail-smtpd (through spamdyke)", port=True),
        Setting("smtp_connections", 20, whole_number("smtp_connections", 1, 1000),
                "tcpserver's connection limit on port 25"),
    ),
    listeners=lambda settings: (
        Listener("qmail-smtpd", "qmailsmtpd", "SMTP from the Internet", settings.smtp_port, public=True),),
    tls_ports=lambda settings: (TlsPort(settings.smtp_port, "SMTP, STARTTLS", starttls=True),),
    checks=(check_smtp_offers_starttls, check_smtp_refuses_relay),
)
