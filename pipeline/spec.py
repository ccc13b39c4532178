"""Parse and validate `trainyard.yml`.

Every error names the key and the line, so a bad spec becomes a failed build with a
message a person can act on. Commands are argument lists: a string is split like a
shell would split words (shlex), but nothing is ever run through a shell.
"""

import re
import shlex
from dataclasses import asdict, dataclass, field

import yaml

CHECK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,49}$")
ENVIRONMENTS = ("staging", "preview", "preprod")
TOP_LEVEL = ("checks", "deploy", "smoke", "acceptance", "environments", "train")
DEPLOY_KEYS = ("install", "start", "stop", "drain", "drain_check", "health")
COMMAND_KEYS = ("run", "junit", "timeout")
MAX_SPEC_BYTES = 256 * 1024
MAX_TIMEOUT = 24 * 3600


class SpecError(ValueError):
    def __init__(self, message, *, key=None, line=None):
        self.key = key
        self.line = line
        where = []
        if key:
            where.append(f"key '{key}'")
        if line:
            where.append(f"line {line}")
        super().__init__(f"trainyard.yml: {message}" + (f" ({', '.join(where)})" if where else ""))


@dataclass
class Command:
    argv: list
    junit: str = ""
    timeout: int | None = None


@dataclass
class Spec:
    checks: dict = field(default_factory=dict)  # name -> Command
    deploy: dict = field(default_factory=dict)  # step -> Command (health: a URL string)
    smoke: Command | None = None
    acceptance: Command | None = None
    environments: list = field(default_factory=lambda: list(ENVIRONMENTS))
    train_schedule: str = "0 * * * *"

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        def command(value):
            return Command(**value) if value else None

        return cls(
            checks={k: Command(**v) for k, v in data["checks"].items()},
            deploy={k: (v if isinstance(v, str) else Command(**v)) for k, v in data["deploy"].items()},
            smoke=command(data.get("smoke")),
            acceptance=command(data.get("acceptance")),
            environments=data.get("environments", list(ENVIRONMENTS)),
            train_schedule=data.get("train_schedule", "0 * * * *"),
        )


def _line(node):
    return node.start_mark.line + 1


def _scalar(node, key):
    if not isinstance(node, yaml.ScalarNode):
        raise SpecError("expected a plain value", key=key, line=_line(node))
    return node.value


def _mapping(node, key):
    if not isinstance(node, yaml.MappingNode):
        raise SpecError("expected a mapping of keys to values", key=key, line=_line(node))
    seen = {}
    for key_node, value_node in node.value:
        name = _scalar(key_node, key)
        if name in seen:
            raise SpecError(f"'{name}' is given twice", key=f"{key}.{name}" if key else name,
                            line=_line(key_node))
        seen[name] = (key_node, value_node)
    return seen


def _argv(node, key):
    if isinstance(node, yaml.SequenceNode):
        argv = [_scalar(item, key) for item in node.value]
    else:
        text = _scalar(node, key)
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise SpecError(f"cannot split the command: {exc}", key=key, line=_line(node)) from exc
    if not argv or not argv[0]:
        raise SpecError("the command is empty", key=key, line=_line(node))
    if any("\x00" in arg for arg in argv):
        raise SpecError("the command contains a NUL byte", key=key, line=_line(node))
    return argv


def _command(node, key):
    """A command: a string, a list of arguments, or {run, junit, timeout}."""
    if not isinstance(node, yaml.MappingNode):
        return Command(argv=_argv(node, key))
    entries = _mapping(node, key)
    for name, (key_node, _) in entries.items():
        if name not in COMMAND_KEYS:
            raise SpecError(f"unknown key '{name}', expected one of {', '.join(COMMAND_KEYS)}",
                            key=f"{key}.{name}", line=_line(key_node))
    if "run" not in entries:
        raise SpecError("'run' is missing", key=key, line=_line(node))
    command = Command(argv=_argv(entries["run"][1], f"{key}.run"))
    if "junit" in entries:
        command.junit = _relative_path(entries["junit"][1], f"{key}.junit")
    if "timeout" in entries:
        command.timeout = _timeout(entries["timeout"][1], f"{key}.timeout")
    return command


def _relative_path(node, key):
    path = _scalar(node, key)
    parts = path.split("/")
    if not path or path.startswith("/") or ".." in parts or "\x00" in path:
        raise SpecError("must be a path inside the repository", key=key, line=_line(node))
    return path


def _timeout(node, key):
    value = _scalar(node, key)
    if not value.isdigit() or not 0 < int(value) <= MAX_TIMEOUT:
        raise SpecError(f"must be whole seconds from 1 to {MAX_TIMEOUT}", key=key, line=_line(node))
    return int(value)


def _checks(node):
    entries = _mapping(node, "checks")
    if not entries:
        raise SpecError("at least one check is needed", key="checks", line=_line(node))
    checks = {}
    for name, (key_node, value_node) in entries.items():
        if not CHECK_NAME.match(name):
            raise SpecError("check names are lower-case letters, digits, '-' and '_'",
                            key=f"checks.{name}", line=_line(key_node))
        checks[name] = _command(value_node, f"checks.{name}")
    return checks


def _deploy(node):
    steps = {}
    for name, (key_node, value_node) in _mapping(node, "deploy").items():
        if name not in DEPLOY_KEYS:
            raise SpecError(f"unknown step '{name}', expected one of {', '.join(DEPLOY_KEYS)}",
                            key=f"deploy.{name}", line=_line(key_node))
        if name == "health":
            steps[name] = _scalar(value_node, "deploy.health")
        else:
            steps[name] = _command(value_node, f"deploy.{name}")
    return steps


def _environments(node):
    if not isinstance(node, yaml.SequenceNode):
        raise SpecError("expected a list", key="environments", line=_line(node))
    names = [_scalar(item, "environments") for item in node.value]
    for item, name in zip(node.value, names, strict=True):
        if name not in ENVIRONMENTS:
            raise SpecError(f"unknown environment '{name}', expected {', '.join(ENVIRONMENTS)}",
                            key="environments", line=_line(item))
    return names


def _train(node):
    entries = _mapping(node, "train")
    schedule = "0 * * * *"
    for name, (key_node, value_node) in entries.items():
        if name != "schedule":
            raise SpecError(f"unknown key '{name}'", key=f"train.{name}", line=_line(key_node))
        schedule = _scalar(value_node, "train.schedule")
        if len(schedule.split()) != 5:
            raise SpecError("a cron schedule has five fields", key="train.schedule",
                            line=_line(value_node))
    return schedule


def parse_spec(text):
    """Parse spec text (str or bytes) into a Spec, or raise SpecError."""
    if isinstance(text, bytes):
        if len(text) > MAX_SPEC_BYTES:
            raise SpecError(f"the file is larger than {MAX_SPEC_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError("the file is not UTF-8") from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        # The context mark is where the broken construct began: the line a person fixes.
        mark = exc.context_mark or exc.problem_mark
        problem = f"{exc.problem}" + (f" {exc.context}" if exc.context else "")
        raise SpecError(f"not valid YAML: {problem}", line=mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}") from exc
    if root is None:
        raise SpecError("the file is empty")
    entries = _mapping(root, "")
    for name, (key_node, _) in entries.items():
        if name not in TOP_LEVEL:
            raise SpecError(f"unknown key '{name}', expected one of {', '.join(TOP_LEVEL)}",
                            key=name, line=_line(key_node))
    if "checks" not in entries:
        raise SpecError("'checks' is missing", key="checks", line=_line(root))
    spec = Spec(checks=_checks(entries["checks"][1]))
    if "deploy" in entries:
        spec.deploy = _deploy(entries["deploy"][1])
    for name in ("smoke", "acceptance"):
        if name in entries:
            setattr(spec, name, _command(entries[name][1], name))
    if "environments" in entries:
        spec.environments = _environments(entries["environments"][1])
    if "train" in entries:
        spec.train_schedule = _train(entries["train"][1])
    return spec
