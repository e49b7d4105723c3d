"""Files: what lands on the host, read from the project's files/<component>/ folders.

``render("stunnel/stunnel.conf.j2", ...)`` renders a template (Jinja2, strict: an unset
value is an error); ``read("tmda/retire.sh")`` gives a file as it is. Templates end in
``.j2`` and only they are rendered; a name that does not exist is refused, naming the file.
"""

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

FILES = Path(__file__).resolve().parent.parent / "files"
_env = Environment(loader=FileSystemLoader(FILES), undefined=StrictUndefined, keep_trailing_newline=True,
                   trim_blocks=True, lstrip_blocks=True)


class MissingFile(LookupError):
    """A task names a file that files/ does not have (one line, naming it)."""


def path(name: str) -> Path:
    """files/NAME, which must exist."""
    found = FILES / name
    if not found.is_file():
        raise MissingFile(f"files/{name} does not exist (named by a task; see files/ for what there is)")
    return found


def render(name: str, **values) -> str:
    if not name.endswith(".j2"):
        raise MissingFile(f"files/{name} is not a template (templates end in .j2; copy it with read())")
    path(name)
    return _env.get_template(name).render(**values)


def read(name: str) -> str:
    if name.endswith(".j2"):
        raise MissingFile(f"files/{name} is a template: render() it")
    return path(name).read_text()
