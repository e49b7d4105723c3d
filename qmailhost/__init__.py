"""qmailhost: the library the tasks share (pyinfra 3). It names no component.

    settings.py    every component's settings, collected and validated once
    platform.py    paths, users, tools and backend names per platform, decided once from facts
    component.py   what a component declares (Component, Needs, Setting, Probe, ...)
    registry.py    finds the components (tasks/) and the backends (backends/) by looking
    facts.py       one HostState fact from the components' probes; one ManagedTree fact
    ops.py         operations of our own (whole files, secrets, users, stamps)
    sources.py     pinned distfiles, verified on the laptop; builds.py: builds on the host
    files.py       reads and renders the project's files/ (templates end in .j2)
    tcprules.py    tcpserver's rules; checks.py: the check runner and the common checks
    dns_lookup.py  a stub resolver for the checks; recovery/: backup and restore
    backends/      services (daemontools, rc.d) and packages (apt, pkgin and pkgsrc)

deploy.py at the top of the project is the table of contents: one call per component
(tasks/<component>.py, its host files in files/<component>/). A component declares
(``COMPONENT``); the library collects.
"""
