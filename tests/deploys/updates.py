"""A deploy of the updates component only (tasks/updates.py): its Debian plans, which
tests/test_updates.py makes with facts of its own (there is no model Debian host)."""

from pyinfra import host

from qmailhost.platform import detect
from qmailhost.settings import Settings
from tasks import updates

updates.configure(detect(), Settings.from_host_data(host.data.dict(), inventory_name=host.name))
