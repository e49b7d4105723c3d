"""Templates: render files/<component>/NAME (Jinja2, strict) into the text a host gets."""

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

FILES = Path(__file__).resolve().parent.parent / "files"
_env = Environment(loader=FileSystemLoader(FILES), undefined=StrictUndefined, keep_trailing_newline=True,
                   trim_blocks=True, lstrip_blocks=True)


def render(name: str, **values) -> str:
    return _env.get_template(name).render(**values)


def read(name: str) -> str:
    return (FILES / name).read_text()
