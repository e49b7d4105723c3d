"""python -m qmailhost settings: every setting, its default and its meaning, as the
components declare them (the README's settings table is this list)."""

import json
import sys

from qmailhost.settings import declared_settings


def _default(value) -> str:
    return "unset" if value is None else f"`{json.dumps(value)}`"


def main(argv: list[str]) -> int:
    if argv != ["settings"]:
        print("usage: python -m qmailhost settings", file=sys.stderr)
        return 2
    print("| setting | component | default | meaning |\n|---|---|---|---|")
    for component, setting in declared_settings():
        print(f"| `{setting.name}` | {component.name} | {_default(setting.default)} | {setting.meaning} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
