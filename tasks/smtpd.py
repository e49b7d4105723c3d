"""qmail-smtpd on port 25: mail from the Internet for the local domains.

tcpserver (0.0.0.0:25, rules: relaying only from 127.0.0.1) runs spamdyke's filters,
then qmail-smtpd as qmaild. Control files, rules and spamdyke's config are read per
connection: only a changed run script restarts the service.
"""

from tasks import daemontools, spamdyke, tcprules
from tasks.platform import Platform
from tasks.settings import Settings
from tasks.templates import render


def configure(platform: Platform, settings: Settings) -> None:
    cdb = tcprules.rules(platform, "smtp", render("tcprules/smtp.rules", port=settings.smtp_port))
    config = spamdyke.smtp_config(platform, settings)
    run = render("daemontools/qmail-smtpd.run", port=settings.smtp_port, tcprules=cdb,
                 hostname=settings.hostname, connections=settings.smtp_connections,
                 spamdyke=platform.spamdyke, spamdyke_conf=config, qmail_home=platform.qmail_home)
    daemontools.service(platform, "qmail-smtpd", run, start_inputs=[])
