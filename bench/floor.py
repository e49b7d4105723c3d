"""The benchmark floor: a deploy with one trivial operation against the same host."""

from pyinfra.operations import files

files.directory(name="Ensure /var/lib/qmailhost exists", path="/var/lib/qmailhost")
