"""A realistic site: mail.example.org, one person and their family, every setting shown.

    pyinfra inventory/example.py deploy.py --dry --diff

Copy this file to inventory/<site>.py and edit. Passwords never go here: each account
names an environment variable or a file on the laptop (mode 600) holding its password.
"""

mail_hosts = [
    (
        "mail.example.org",  # the inventory name; also the default `hostname`
        {
            # --- how pyinfra reaches the host
            "ssh_user": "root",
            # "ssh_hostname": "203.0.113.25",   # when the name does not resolve yet
            # "ssh_key": "~/.ssh/id_ed25519",
            # --- identity
            "hostname": "mail.example.org",  # control/me and the TLS certificate's name
            "domains": ["example.org", "example.net"],  # delivered here
            # --- people
            "accounts": [
                {"name": "alice", "password_env": "QMAILHOST_ALICE_PASSWORD"},
                {"name": "bob", "password_file": "~/.config/qmailhost/bob.password"},
            ],
            "aliases": {  # postmaster, root, mailer-daemon and abuse default to the first account
                "postmaster": "alice",
                "abuse": "alice",
                "root": "alice",
                "mailer-daemon": "alice",
                "info": "bob",
            },
            "virtualdomains": {},  # e.g. {"lists.example.org": "alice-lists"}
            "smtproutes": {},  # e.g. {"": "smarthost.example.net"} to send everything through a relay
            # --- TLS on 587: the pair from your ACME client, or leave both unset for a
            # self-signed certificate made on the host once
            # "tls_cert": "~/acme/mail.example.org/fullchain.pem",
            # "tls_key": "~/acme/mail.example.org/privkey.pem",
            # --- mail others trust: DKIM signing (keys made on the host), Authentication-Results
            # on port 25, and what records.py prints (pyinfra inventory/example.py records.py)
            "dkim": True,
            "dkim_selector": "mail",  # rotate: a new name here, the old one in dkim_retired_selectors
            "dkim_retired_selectors": [],
            "authentication_results": True,
            "dmarc_policy": "none",  # start here; "quarantine" or "reject" once reports look clean
            # "dmarc_reports": "dmarc-reports@example.org",
            # "public_addresses": ["203.0.113.25", "2001:db8::25"],  # behind NAT: what the Internet reaches
            # --- ports and limits
            "smtp_port": 25,
            "submission_port": 587,
            "ofmipd_port": 26,  # 127.0.0.1 only, behind stunnel
            "databytes": 20_000_000,
            "concurrency_remote": 20,
            "concurrency_local": 10,
            "smtp_connections": 20,
            "submission_connections": 20,
            # --- spamdyke on port 25
            "spamdyke_filters": {
                "reject_empty_rdns": True,
                "reject_unresolvable_rdns": True,
                "reject_ip_in_cc_rdns": True,
                "dns_blacklists": ["zen.spamhaus.org"],
                "greeting_delay_secs": 5,
                "max_recipients": 50,
            },
            # --- who does SMTP AUTH on 587: "ofmipd" (default), "spamdyke"; "tmda" on NetBSD
            "submission": "ofmipd",
            # --- sources: override a component's version, URL or checksum (a local mirror,
            # a patched fork); a new version needs its sha512
            "sources": {
                # "notqmail": {"version": "1.09", "sha512": "..."},
            },
            # "distfiles": "~/.cache/qmailhost/distfiles",
        },
    ),
]
