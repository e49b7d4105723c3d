"""Spam judged at SMTP time: rspamd (with Redis) asked by the inbound filter on port 25.

- The filter in front of qmail-queue (tasks/dkim.py's ``authres.py``, QMAILQUEUE in qmail-smtpd's
  environment: one program per message) posts each message with its envelope (client address,
  HELO, sender, recipients) to rspamd's normal worker on 127.0.0.1:11333 (/checkv2) and acts on
  the verdict before qmail-smtpd answers the final dot: ``reject`` is a permanent refusal (554),
  ``soft reject`` a temporary one (451), anything else is queued with rspamd's ``X-Spam-Status``
  and ``X-Spamd-Bar``. A sender's own X-Spam headers never survive. rspamd not answering within
  its time is no reason to lose mail: the message is queued, marked ``X-Spam-Status: Unknown``.
  Scores: ``spam_reject_score`` refuses, ``spam_junk_score`` marks as spam (a later slice files
  those into Junk); ``dmarc_enforce`` makes a failed DMARC check with p=reject a refusal and
  p=quarantine a mark. Greylisting is off.
- rspamd runs in the foreground under the host's supervision (daemontools; rc.d on NetBSD), on
  loopback only: the normal worker on 11333, the controller on 11334 behind a password made on
  the host once (root's alone, never in the deploy's output: only its hash reaches rspamd's
  config, through an include) with ``secure_ip`` overridden, since the stock one lets any local
  client in without it. The proxy worker (milter) is off. Its DNS goes to the host's own resolver
  (tasks/resolver.py). Its config is ours in local.d/, whole files; a change is checked with
  ``rspamadm configtest`` and then reloaded (HUP).
- Redis on 127.0.0.1:6379 keeps rspamd's state (Bayes statistics, history), with its snapshot on
  disk so what was learned survives restarts. Debian's own units for both are stopped and
  disabled where systemd runs, so only the supervised ones hold the ports.
- ``spam_filter`` false: both services are retired and the filter asks no one; the packages, the
  statistics and the password stay, so turning it on again keeps what was learned.
- The status check ``spam_filter`` asks rspamd on the host (read-only): the normal worker
  answers, the controller refuses a request without its password, and what it has scanned and
  learned.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass

from pyinfra.api import deploy
from pyinfra.operations import systemd

from qmailhost import ops
from qmailhost.backends import services
from qmailhost.checks import ERROR, OK, SKIPPED, WARNING, one_line
from qmailhost.component import Component, Listener, Needs, Setting
from qmailhost.facts import host_state
from qmailhost.files import read, render
from qmailhost.platform import Platform
from qmailhost.settings import Settings, SettingsError, boolean, declared_settings
from tasks import resolver

ADDRESS = "127.0.0.1"  # every port below listens here only
NORMAL_PORT = 11333  # rspamd's normal worker: the filter's /checkv2
CONTROLLER_PORT = 11334  # rspamd's controller: statistics and learning, behind its password
REDIS_PORT = 6379
PORTS = {NORMAL_PORT: "rspamd's normal worker", CONTROLLER_PORT: "rspamd's controller", REDIS_PORT: "Redis"}
TIME_BUDGET = 20  # seconds the filter waits for a verdict; then the message is queued, marked Unknown
RSPAMD, REDIS = "rspamd", "redis"  # the services (daemontools directories, rc.d scripts)
# An address none of the host's clients has (TEST-NET-1, RFC 5737): the controller's secure_ip,
# so that no client, local or not, is let in without the password.
NO_CLIENT = "192.0.2.1"
# Our whole files in rspamd's local.d/ (each rendered from files/spam/NAME.j2).
LOCAL_D = ("worker-normal.inc", "worker-controller.inc", "worker-proxy.inc", "logging.inc", "options.inc",
           "redis.conf", "actions.conf", "greylist.conf", "hfilter.conf", "milter_headers.conf", "dmarc.conf",
           "classifier-bayes.conf")
# ... and in override.d/ (files/spam/override-NAME.j2): what must replace a stock list, which a
# local.d file would only add to (rspamd merges local.d's lists into the stock ones).
OVERRIDE_D = ("options.inc",)
# How the host makes the controller's password hash from the password file: rspamd's own PBKDF
# (what `rspamadm pw` prints), in rspamadm's Lua, reading the password on stdin: it is never on
# a command line (rspamadm pw takes it only as -p PASSWORD or from a terminal).
PBKDF = "print(require(\"rspamd_cryptobox\").pbkdf(io.read(\"*l\")))"


@dataclass(frozen=True)
class Paths:
    packages: tuple[str, ...]
    rspamd: str  # the daemon
    rspamadm: str
    config: str  # rspamd.conf; our files go to local.d/ beside it
    user: str  # rspamd's workers run as this user (and its group of the same name)
    rundir: str  # rspamd's pidfile directory (options.pidfile: $RUNDIR), made by the run script
    redis: str  # redis-server
    redis_config: str  # Redis's config, written whole by us
    redis_user: str
    redis_dir: str  # Redis's working directory: its snapshot, dump.rdb
    redis_pidfile: str | None  # None: no pidfile (in the foreground under supervise)
    log: str  # rspamd and Redis log to "console" (stderr, which multilog keeps) or "syslog"
    gtube: dict[str, str]  # release -> options.inc's GTUBE line (the option changed in rspamd 3.8)
    units: tuple[str, ...] = ()  # the packages' own systemd units, which would hold the ports too


# rspamd's GTUBE: only the standard test string (XJS*C4JDBQADN1...) is honoured, as a reject. Its
# variants (YJS: add header, ZJS: rewrite subject, AJS: no action and every check skipped) stay
# off, as rspamd's own default has them: any sender could put AJS in a message to skip the filter.
GTUBE_SINCE_3_8 = 'gtube_patterns = "reject";'
GTUBE_BEFORE_3_8 = "enable_test_patterns = false;"

PATHS = {
    # rspamd 3.12 (Debian 13), 3.4 (Debian 12); redis-server 8.0 and 7.0. Redis gets its own
    # config path, not the package's conffile /etc/redis/redis.conf (daemonize yes there).
    "debian": Paths(("rspamd", "redis-server"), "/usr/bin/rspamd", "/usr/bin/rspamadm", "/etc/rspamd/rspamd.conf",
                    "_rspamd", "/run/rspamd", "/usr/bin/redis-server", "/etc/qmailhost/redis.conf", "redis",
                    "/var/lib/redis", None, "console", {"12": GTUBE_BEFORE_3_8, "13": GTUBE_SINCE_3_8},
                    units=("rspamd.service", "redis-server.service")),
    # pkgsrc mail/rspamd (3.9 and later; PKG_SYSCONFDIR etc/rspamd, user rspamd, RUNDIR
    # /var/run/rspamd; rc.d script rspamd) and databases/redis (rc.d script redis, which runs
    # `redis-server PKG_SYSCONFDIR/redis.conf` as redis_user: that config is ours; REDIS_DATADIR
    # /var/db/redis). rc.d wants daemons that fork: both log to syslog.
    "netbsd": Paths(("rspamd", "redis"), "/usr/pkg/bin/rspamd", "/usr/pkg/bin/rspamadm",
                    "/usr/pkg/etc/rspamd/rspamd.conf", "rspamd", "/var/run/rspamd", "/usr/pkg/bin/redis-server",
                    "/usr/pkg/etc/redis.conf", "redis", "/var/db/redis", "/var/db/redis/redis.pid", "syslog",
                    {"9": GTUBE_SINCE_3_8, "10": GTUBE_SINCE_3_8}),
}


def local_dir(platform: Platform, kind: str = "local.d") -> str:
    return f"{PATHS[platform.name].config.rsplit('/', 1)[0]}/{kind}"


def files(platform: Platform) -> dict[str, str]:
    """qmailhost's spam files on the host: a root-only directory with the controller's password
    and the include holding its hash."""
    mine = f"{platform.config_dir}/spam"
    return {"dir": mine, "password": f"{mine}/controller.password", "include": f"{mine}/controller.inc"}


def checkv2_url(settings: Settings) -> str | None:
    """Where the inbound filter asks for a verdict (None: spam_filter is off, it asks no one)."""
    return f"http://{ADDRESS}:{NORMAL_PORT}/checkv2" if settings.spam_filter else None


# --- settings --------------------------------------------------------------------------------


def _score(setting: str):
    def parse(value, _values=None) -> int | float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not 0 < value <= 1000:
            raise SettingsError(setting, f"{value!r} is not a score above 0 (up to 1000)",
                                f"set {setting} to a number such as 6 or 12.5")
        return value

    return parse


def _validate(settings: Settings) -> None:
    if settings.spam_reject_score <= settings.spam_junk_score:
        raise SettingsError("spam_reject_score", f"{settings.spam_reject_score} is not above spam_junk_score "
                            f"({settings.spam_junk_score})", "refuse at a higher score than the one that marks spam")
    if not settings.spam_filter:
        return
    for _component, setting in declared_settings():
        taken = getattr(settings, setting.name) if setting.port else None
        if taken in PORTS:
            raise SettingsError(setting.name, f"port {taken} is {PORTS[taken]}'s (on {ADDRESS}, spam_filter)",
                                "use another port, or set spam_filter=false")


# --- the deploy ------------------------------------------------------------------------------


def _number(score: int | float) -> str:
    return f"{score:g}" if isinstance(score, float) else str(score)


def local_d(platform: Platform, settings: Settings) -> dict[str, str]:
    """Our files in rspamd's local.d/: name -> content."""
    paths = PATHS[platform.name]
    values = {"address": ADDRESS, "normal_port": NORMAL_PORT, "controller_port": CONTROLLER_PORT,
              "redis_port": REDIS_PORT, "no_client": NO_CLIENT, "password_include": files(platform)["include"],
              "log": paths.log, "resolver": resolver.ADDRESS, "gtube": paths.gtube[platform.release],
              "reject": _number(settings.spam_reject_score), "junk": _number(settings.spam_junk_score),
              "dmarc_enforce": settings.dmarc_enforce}
    return {name: render(f"spam/{name}.j2", **values) for name in LOCAL_D}


def override_d() -> dict[str, str]:
    """Our files in rspamd's override.d/: name -> content."""
    return {name: render(f"spam/override-{name}.j2") for name in OVERRIDE_D}


def redis_config(platform: Platform) -> str:
    paths = PATHS[platform.name]
    return render("spam/redis-server.conf.j2", address=ADDRESS, port=REDIS_PORT, dir=paths.redis_dir,
                  daemonize=not services.supervises(platform), pidfile=paths.redis_pidfile,
                  syslog=paths.log == "syslog")


def password_command(platform: Platform) -> str:
    """Make the controller's password (once: a password file kept is used again) and the include
    with its hash, both root's alone, each renamed into place whole. Nothing is printed."""
    mine, paths = files(platform), PATHS[platform.name]
    folder, password, include = (shlex.quote(mine[k]) for k in ("dir", "password", "include"))
    return (f"umask 077 && mkdir -p {folder} && chmod 700 {folder} && "
            f"if [ ! -s {password} ]; then od -An -N24 -tx1 /dev/urandom | tr -d ' \\n' > {password}.new && "
            f"mv -f {password}.new {password}; fi && "
            f"h=$({paths.rspamadm} lua -b -e {shlex.quote(PBKDF)} < {password}) && "
            f"case \"$h\" in '$2$'*) ;; *) echo 'rspamadm made no password hash' >&2; exit 1 ;; esac && "
            f"printf 'password = \"%s\";\\n' \"$h\" > {include}.new && mv -f {include}.new {include}")


@deploy("spam")
def configure(platform: Platform, settings: Settings) -> None:
    """Redis and rspamd supervised, rspamd's config ours, the controller's password; or both retired."""
    if not settings.spam_filter:
        for name in (RSPAMD, REDIS):
            services.backend(platform).retire(platform, name, "spam_filter is off")
        return
    paths, mine = PATHS[platform.name], files(platform)
    if host_state().get("systemd"):
        for unit in paths.units:
            systemd.service(name=f"Stop and disable {unit} (qmailhost supervises it)", service=unit,
                            running=False, enabled=False)
    redis = redis_config(platform)
    redis_rewritten = ops.differs(paths.redis_config, redis)
    ops.whole_file(name="Write Redis's config", dest=paths.redis_config, content=redis)
    services.declare(platform, services.Service(
        name=REDIS, description=f"Redis for rspamd on {ADDRESS}:{REDIS_PORT}",
        run=render("spam/redis.run.j2", address=ADDRESS, port=REDIS_PORT, user=paths.redis_user,
                   program=paths.redis, config=paths.redis_config, dir=paths.redis_dir),
        rcd=services.Rcd("redis", (("user", paths.redis_user), ("flags", ""))),
        reads_at_start=(redis,), rewritten=redis_rewritten,
    ))
    config = local_d(platform, settings)
    for name, content in config.items():
        ops.whole_file(name=f"Write rspamd's local.d/{name}", dest=f"{local_dir(platform)}/{name}", content=content)
    overrides = override_d()
    for name, content in overrides.items():
        ops.whole_file(name=f"Write rspamd's override.d/{name}", dest=f"{local_dir(platform, 'override.d')}/{name}",
                       content=content)
    made = ops.managed_file(mine["password"]) is not None and ops.managed_file(mine["include"]) is not None
    ops.decided(name="Make rspamd's controller password (root's alone, never shown)",
                command=password_command(platform), needed=not made, why_not="the controller has its password")
    inputs = "\n".join(f"{name}\n{content}" for name, content in [*config.items(), *overrides.items()])
    ops.stamped(name="Check rspamd's config (rspamadm configtest)", stamp="spam-configtest", inputs=inputs,
                commands=[f"{paths.rspamadm} configtest -c {paths.config}"], description="check rspamd's config",
                rewritten=not made)
    services.declare(platform, services.Service(
        name=RSPAMD, description=f"rspamd on {ADDRESS}:{NORMAL_PORT} (controller {CONTROLLER_PORT})",
        run=render("spam/rspamd.run.j2", address=ADDRESS, normal_port=NORMAL_PORT, controller_port=CONTROLLER_PORT,
                   user=paths.user, rundir=paths.rundir, program=paths.rspamd, config=paths.config),
        rcd=services.Rcd("rspamd", (("flags", ""),)),
        rewritten=not made,  # a password made by this run is read at start
        reload_on=(inputs,),
    ))


# --- status check ----------------------------------------------------------------------------


def stat_command(platform: Platform) -> str:
    """Ask rspamd on the host, read-only (files/spam/stat.py, run by the host's Python)."""
    return (f"{platform.python} -c {shlex.quote(read('spam/stat.py'))} {shlex.quote(files(platform)['password'])} "
            f"{ADDRESS} {NORMAL_PORT} {CONTROLLER_PORT}")


def check_spam_filter(target):
    """rspamd answers the filter, its controller wants its password, and what it has scanned and learned."""
    if not target.settings.spam_filter:
        return SKIPPED, "spam_filter is off: mail on port 25 is not judged"
    try:
        seen = json.loads(target.run(stat_command(target.platform)).strip().splitlines()[-1])
    except (ValueError, IndexError):
        return ERROR, "the question to rspamd printed no answer"
    if seen.get("ping") != "pong":
        return ERROR, f"rspamd's normal worker does not answer on {NORMAL_PORT}: {one_line(seen.get('ping'))} " \
                      "(mail on port 25 is queued unjudged, marked X-Spam-Status: Unknown)"
    if seen.get("open") not in (401, 403):
        return ERROR, f"rspamd's controller answered a request without its password ({seen.get('open')}): " \
                      "anyone on the host can teach it or change its settings"
    stat = seen.get("stat")
    if not isinstance(stat, dict):
        return WARNING, f"rspamd answers, but its controller did not give statistics: {one_line(stat)}"
    actions = stat.get("actions") or {}
    learned = {s.get("symbol"): s.get("revision", 0) for s in stat.get("statfiles") or [] if isinstance(s, dict)}
    return OK, (f"rspamd {stat.get('version', '')} answers; {stat.get('scanned', 0)} scanned "
                f"({actions.get('reject', 0)} refused, {actions.get('add header', 0)} marked spam); Bayes learned "
                f"{learned.get('BAYES_SPAM', 0)} spam, {learned.get('BAYES_HAM', 0)} ham; "
                "the controller wants its password")


COMPONENT = Component(
    name="spam",
    settings=(
        Setting("spam_filter", True, boolean("spam_filter"),
                "judge mail arriving on port 25 with rspamd (and Redis) before it is accepted"),
        Setting("spam_reject_score", 15, _score("spam_reject_score"),
                "rspamd's score from which mail on port 25 is refused (554); above `spam_junk_score`"),
        Setting("spam_junk_score", 6, _score("spam_junk_score"),
                "rspamd's score from which mail is accepted marked as spam (`X-Spam-Status: Yes`)"),
        Setting("dmarc_enforce", True, boolean("dmarc_enforce"),
                "a sender's DMARC policy is applied: `p=reject` refused, `p=quarantine` marked as spam"),
    ),
    validate=_validate,
    needs=lambda platform, settings: Needs(packages=PATHS[platform.name].packages if settings.spam_filter else ()),
    managed_roots=lambda platform: (f"1:{local_dir(platform)}", f"1:{local_dir(platform, 'override.d')}"),
    listeners=lambda settings: (
        Listener(REDIS, "redis", "Redis (rspamd's statistics)", REDIS_PORT, public=False),
        Listener(RSPAMD, "rspamd", "rspamd's controller", CONTROLLER_PORT, public=False),
    ) if settings.spam_filter else (),
    checks=(check_spam_filter,),
)
