"""tcprules: who may connect to a tcpserver service, compiled into a cdb.

The rules are a whole file (diffable). The cdb is compiled when the rules differ from
what the last compile recorded, or when the cdb itself is no longer the one that
compile wrote (changed by hand), so a deploy always puts the declared rules back.
"""

import hashlib

from pyinfra import host, logger
from pyinfra.api import operation

from qmailhost import ops
from qmailhost.facts import STAMP_DIR, host_state
from qmailhost.platform import Platform


def rules(platform: Platform, name: str, text: str) -> str:
    """Write NAME.rules and compile NAME.cdb; returns the cdb's path."""
    source, cdb = platform.tcprules_paths(name)
    ops.whole_file(name=f"Write the {name} tcprules", dest=source, content=text)
    compile_rules(name=f"Compile {name}.cdb", source=source, cdb=cdb, text=text, stamp=f"tcprules-{name}",
                  tcprules=platform.tcprules, sha256=platform.shell.sha256)
    return cdb


@operation()
def compile_rules(source: str, cdb: str, text: str, stamp: str, tcprules: str, sha256: str):
    rules_digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    current_cdb = ops.managed_file(cdb)
    recorded = host_state()["stamps"].get(stamp)
    if current_cdb and recorded == f"{rules_digest} {current_cdb['sha256']}":
        host.noop(f"{cdb} matches its rules")
        return
    host.log(f"Will compile {cdb}", logger.info)
    yield f"{tcprules} {cdb} {cdb}.tmp < {source}"
    yield f"mkdir -p {STAMP_DIR} && " + ops.record_stamp(stamp, f'"{rules_digest} $({sha256} < {cdb} | cut -c1-64)"')
