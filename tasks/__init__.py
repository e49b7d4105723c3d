"""The components, one module each (their host files in files/<name>/), and the mail path:

    Internet :25    -> tcpserver -> spamdyke (STARTTLS, DNSBL) -> qmail-smtpd       smtpd, spamdyke
                    -> queue filter: rspamd's verdict (554/451 at the final dot),   dkim, spam
                       Authentication-Results -> qmail-queue
    client :587/465 -> stunnel (TLS) -> ofmipd (AUTH, checkpassword) on :26         stunnel, submission,
                                                                                    mess822, checkpassword
    qmail-send      -> qmail-local -> ~/Maildir                                     qmail, accounts
                    -> DKIM signer -> qmail-remote (TLS) -> Internet                dkim, qmail
    client :993/143 -> Dovecot (PAM) -> ~/Maildir                                   imap
    every TLS port  <- one pair and one policy (self-signed, files, or ACME)        tls, acme
    spamdyke, checks, rspamd -> unbound on 127.0.0.1:53                             resolver
    rspamd          -> Redis on 127.0.0.1 (its statistics)                          spam
    records.py      <- the DNS records every component declares                     dns
    every daemon    <- security updates; a restart when one replaced its code       updates
    between deploys <- scheduled checks, alerts, heartbeat; restic backups         health, backup
    retired         <- TMDA's pieces, archived then removed                         tmda

Each module defines ``COMPONENT`` (qmailhost/component.py), found by qmailhost/registry.py.
"""
