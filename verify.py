"""qmailhost's status checks on their own: does the host work, seen from outside?

    pyinfra inventory/<site>.py verify.py

Runs the checks of tasks/checks.py from this laptop (SMTP, TLS, DNS) and over SSH
(read-only: svstat, the queue, TMDA leftovers), prints a summary table, and exits
non-zero when any check reports an error. It changes nothing on the host; deploy.py
runs the same checks at its end unless verify_after_deploy is false.
"""

from pyinfra import host

from tasks import checks
from tasks.platform import detect
from tasks.settings import Settings

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
checks.verify(settings, detect())
