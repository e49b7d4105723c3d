"""qmailhost's status checks on their own: does the host work, seen from outside?

    pyinfra inventory/<site>.py verify.py

Runs every component's checks (qmailhost/checks.py collects them) from this laptop
(SMTP, TLS, DNS) and over SSH (read-only, in the platform's dialect: the service
backend's status, the queue, TMDA leftovers), prints a summary table, and exits
non-zero when any check reports an error. Then the host's own last scheduled run of the
same checks (tasks/health.py), and what changed in the last week, so the owner sees what
happened while away. It changes nothing on the host; deploy.py runs the same checks at
its end unless verify_after_deploy is false.
"""

from pyinfra import host

from qmailhost import checks
from qmailhost.platform import detect
from qmailhost.settings import Settings
from tasks import health

settings = Settings.from_host_data(host.data.dict(), inventory_name=host.name)
platform = detect()
checks.verify(settings, platform, also=health.show_last_run if settings.health_every is not None else None)
