"""qmail-smtpd on port 25: mail from the Internet for the local domains.

tcpserver (0.0.0.0:25, rules in smtp.rules: relaying only from 127.0.0.1) runs
spamdyke's filters (spamdyke/), then qmail-smtpd as qmaild. Control files, rules and
spamdyke's config are read per connection: only a changed service definition (run
script, rc.conf.d file) restarts it. Its status check: port 25 takes mail for the
local domains and refuses to relay for a stranger.
"""

from qmailhost import spamdyke
from qmailhost.backends import rcd, services
from qmailhost.core import tcprules
from qmailhost.core.checks import ERROR, FOREIGN, OK, STRANGER, WARNING, reply_text
from qmailhost.core.component import Component, Listener, Setting
from qmailhost.core.platform import Platform
from qmailhost.core.settings import Settings, port, whole_number
from qmailhost.core.templates import render


def configure(platform: Platform, settings: Settings) -> None:
    cdb = tcprules.rules(platform, "smtp", render("smtpd/smtp.rules", port=settings.smtp_port))
    config = spamdyke.smtp_config(platform, settings)
    program = spamdyke.program(platform)
    services.declare(platform, services.Service(
        name="qmail-smtpd", description=f"qmail-smtpd on port {settings.smtp_port} behind spamdyke's filters",
        run=render("smtpd/qmail-smtpd.run", port=settings.smtp_port, tcprules=cdb, hostname=settings.hostname,
                   connections=settings.smtp_connections, spamdyke=program, spamdyke_conf=config,
                   qmail_home=platform.qmail_home),
        rcd=services.Rcd("qmailsmtpd", (
            *rcd.tcpserver(platform, settings.hostname, "qmaild", "0", settings.smtp_port, cdb, 64_000_000),
            ("presmtpd", f"{program} -f {config}"),
            ("smtpdcmd", f"{platform.qmail_bin}/qmail-smtpd"),
            ("postsmtpd", ""),
            *rcd.logging("smtpd"),
            ("tls", "NO"),  # stunnel ends TLS; port 25 offers no STARTTLS (as on Debian)
        )),
    ))


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
    checks=(check_smtp_refuses_relay,),
)
