"""qmailhost: a personal qmail mail host, as code (pyinfra 3).

    core/        the framework: settings, platform data, facts, operations, sources and
                 builds, templates, tcprules, the component registry, the status-check
                 runner, the DNS stub resolver, backup and restore
    backends/    service backends (daemontools, rc.d) and package backends (apt, pkgin)
    <component>/ one folder per component, with its templates and scripts, its settings,
                 status checks, platform data and backup contribution beside its code:
                 qmail, smtpd, submission, stunnel, tls, accounts, spamdyke, mess822,
                 checkpassword, tmda, imap, acme, resolver, dkim
                 (signing, Authentication-Results), dns (the records and their checks)

deploy.py at the top of the project is the table of contents: one call per component.
A component declares (``COMPONENT``, see qmailhost/component.py); the core collects.
"""
