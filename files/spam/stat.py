"""qmailhost (spam/): what the spam_filter check asks rspamd on the host, read-only.

Run by the host's Python (python3 -c THIS PASSWORD_FILE ADDRESS NORMAL_PORT CONTROLLER_PORT):
the normal worker's /ping; the controller's /stat without the password (it must refuse) and
with it, read from root's file, never from a command line. Prints one JSON line
{"ping": "pong" or why not, "open": the status without the password, "stat": /stat's JSON
or why not}, and exits 0: the check judges.
"""

import http.client
import json
import sys

SECONDS = 10


def ask(address: str, port: int, path: str, headers: dict) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(address, port, timeout=SECONDS)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(1_000_000)
    finally:
        connection.close()


def main(password_file: str, address: str, normal: str, controller: str) -> None:
    seen = {}
    try:
        status, body = ask(address, int(normal), "/ping", {})
        seen["ping"] = body.decode(errors="replace").strip() if status == 200 else f"HTTP {status}"
    except OSError as error:
        seen["ping"] = f"{type(error).__name__}: {error}"
    try:
        seen["open"] = ask(address, int(controller), "/stat", {})[0]
        with open(password_file) as secret:
            password = secret.read().strip()
        status, body = ask(address, int(controller), "/stat", {"Password": password})
        seen["stat"] = json.loads(body) if status == 200 else f"HTTP {status}"
    except (OSError, ValueError) as error:
        seen.setdefault("open", None)
        seen["stat"] = f"{type(error).__name__}: {error}"
    print(json.dumps(seen))


main(*sys.argv[1:5])
