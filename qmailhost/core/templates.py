"""Templates: render a component's file, qmailhost/<component>/NAME (Jinja2, strict), into
the text a host gets. Names are "component/NAME", e.g. "qmail/qmail-send.run"."""

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

PACKAGE = Path(__file__).resolve().parent.parent
_env = Environment(loader=FileSystemLoader(PACKAGE), undefined=StrictUndefined, keep_trailing_newline=True,
                   trim_blocks=True, lstrip_blocks=True)


def render(name: str, **values) -> str:
    return _env.get_template(name).render(**values)


def read(name: str) -> str:
    return (PACKAGE / name).read_text()
