"""What a parsed `trainyard.yml` is: a Spec of Commands, the limits a spec must keep
within, and the one error a bad spec raises.

A build stores `spec.to_dict()` as JSON and its jobs read it back with `Spec.from_dict`:
the round trip is exact, and dicts stored before a field existed still load.
"""

import re
from dataclasses import asdict, dataclass, field

from django.conf import settings

ENVIRONMENTS = ("staging", "preview", "preprod")
DEFAULT_SCHEDULE = "0 * * * *"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text):
    """Control characters shown escaped (`\\x1b`, `\\n`): a spec's text reaches terminals
    (`bb`, `pr`) and pages, where a raw escape would move the cursor or recolour."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], str(text))


class SpecError(ValueError):
    """`key` and `line` say where; the message never holds a raw control character."""

    def __init__(self, message, *, key=None, line=None):
        self.key = key
        self.line = line
        where = []
        if key:
            where.append(f"key '{key}'")
        if line:
            where.append(f"line {line}")
        if key and _CONTROL.search(key):
            # Every key is checked against fixed names or a pattern, so such a key is always
            # refused; the message must show the character, escaped, or it reads as nonsense.
            where.append("the key holds a control character, shown escaped")
        text = f"trainyard.yml: {message}" + (f" ({', '.join(where)})" if where else "")
        super().__init__(printable(text))


@dataclass(frozen=True)
class SpecLimits:
    """How much one spec may ask for. `from_settings` reads the operator's limits
    (settings.TRAINYARD); the defaults here are the same as the settings' defaults."""

    max_checks: int = 50
    max_spec_values: int = 5000  # values visited in the YAML graph, once per alias use
    max_command_bytes: int = 32 * 1024  # one command's arguments; also one env value
    max_job_timeout: int = 2 * 3600
    max_depth: int = 20  # nesting levels, the top-level mapping being level 1
    max_env: int = 100  # entries in one `env` mapping
    max_spec_bytes: int = 256 * 1024  # the file, and its values once aliases are expanded

    @classmethod
    def from_settings(cls):
        conf = settings.TRAINYARD
        return cls(
            max_checks=conf.get("MAX_CHECKS", cls.max_checks),
            max_spec_values=conf.get("MAX_SPEC_VALUES", cls.max_spec_values),
            max_command_bytes=conf.get("MAX_COMMAND_BYTES", cls.max_command_bytes),
            max_job_timeout=conf.get("MAX_JOB_TIMEOUT", cls.max_job_timeout),
        )


def command_bytes(argv):
    """The size of an argument list: the UTF-8 bytes of its arguments, added up."""
    return sum(len(arg.encode("utf-8")) for arg in argv)


@dataclass
class Command:
    argv: list[str]
    junit: str = ""
    timeout: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data):
        return cls(argv=list(data["argv"]), junit=data.get("junit", ""),
                   timeout=data.get("timeout"), env=dict(data.get("env") or {}))


@dataclass
class Spec:
    checks: dict = field(default_factory=dict)  # name -> Command
    # step -> Command; "health": {"url", "expect", "timeout"}; "stop_timeout" and
    # "drain_timeout": seconds
    deploy: dict = field(default_factory=dict)
    smoke: Command | None = None
    acceptance: Command | None = None
    environments: list = field(default_factory=lambda: list(ENVIRONMENTS))
    train_schedule: str = DEFAULT_SCHEDULE
    setup: list[Command] = field(default_factory=list)  # run before each job's own command
    cache: dict | None = None  # {"key": [files], "paths": [paths]}
    env: dict[str, str] = field(default_factory=dict)  # for every job; a command's own wins

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        def command(value):
            return Command.from_dict(value) if value else None

        cache = data.get("cache")
        return cls(
            checks={k: Command.from_dict(v) for k, v in data["checks"].items()},
            deploy=_deploy_from_dict(data.get("deploy") or {}),
            smoke=command(data.get("smoke")),
            acceptance=command(data.get("acceptance")),
            environments=list(data.get("environments", ENVIRONMENTS)),
            train_schedule=data.get("train_schedule", DEFAULT_SCHEDULE),
            setup=[Command.from_dict(c) for c in data.get("setup") or []],
            cache={"key": list(cache["key"]), "paths": list(cache["paths"])} if cache else None,
            env=dict(data.get("env") or {}),
        )


def _deploy_from_dict(data):
    deploy = {}
    for name, value in data.items():
        if name == "health":
            # A plain URL string: stored before health took {url, expect, timeout}.
            value = {"url": value} if isinstance(value, str) else value
            deploy[name] = {"url": value["url"], "expect": value.get("expect") or "",
                            "timeout": value.get("timeout")}
        elif isinstance(value, int):
            deploy[name] = value
        else:
            deploy[name] = Command.from_dict(value)
    return deploy
