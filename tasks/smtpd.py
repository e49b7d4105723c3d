"""qmail-smtpd on port 25: mail from the Internet for the local domains.

tcpserver (0.0.0.0:25, rules: relaying only from 127.0.0.1) runs spamdyke's filters,
then qmail-smtpd as qmaild. Control files, rules and spamdyke's config are read per
connection: only a changed service definition (run script, rc.conf.d file) restarts it.
"""

from tasks import services, spamdyke, tcprules
from tasks.platform import Platform
from tasks.settings import Settings
from tasks.templates import render


def configure(platform: Platform, settings: Settings) -> None:
    cdb = tcprules.rules(platform, "smtp", render("tcprules/smtp.rules", port=settings.smtp_port))
    config = spamdyke.smtp_config(platform, settings)
    services.backend(platform).smtpd(platform, settings, cdb, config)
