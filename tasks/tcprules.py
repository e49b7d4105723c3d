"""tcprules: who may connect to a tcpserver service, compiled into a cdb.

The rules are a whole file (diffable); the cdb is compiled only when the rules'
content differs from what the last compile recorded.
"""

from tasks import ops
from tasks.platform import Platform


def rules(platform: Platform, name: str, text: str) -> str:
    """Write NAME.rules and compile NAME.cdb; returns the cdb's path."""
    source, cdb = platform.tcprules_paths(name)
    ops.whole_file(name=f"Write the {name} tcprules", dest=source, content=text)
    ops.stamped(
        name=f"Compile {name}.cdb", stamp=f"tcprules-{name}", inputs=text,
        commands=[f"{platform.tcprules} {cdb} {cdb}.tmp < {source}"], description=f"compile {name}.cdb",
    )
    return cdb
