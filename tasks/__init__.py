"""qmailhost's tasks: one module per component; deploy.py calls them in order."""
