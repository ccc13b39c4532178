"""Parse and validate `trainyard.yml`.

Every error names the key and the line, so a bad spec becomes a failed build with a
message a person can act on. Commands are argument lists: a string is split like a
shell would split words (shlex), but nothing is ever run through a shell.
"""

import posixpath
import re
import shlex
import urllib.parse

import yaml

from .graph import compose, join, line, mapping, scalar
from .model import DEFAULT_SCHEDULE, ENVIRONMENTS, Command, Spec, SpecError, SpecLimits, command_bytes

CHECK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,49}")  # fullmatch: `$` allows a final "\n"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SECONDS = re.compile(r"[0-9]{1,9}")  # not str.isdigit(), which takes "²"
TOP_LEVEL = ("checks", "setup", "cache", "env", "deploy", "smoke", "acceptance", "environments",
             "train")
DEPLOY_KEYS = ("install", "run", "start", "stop", "stop_timeout", "drain", "drain_check",
               "drain_timeout", "health")
DEPLOY_SECONDS = ("stop_timeout", "drain_timeout")
# Deploy keys that only make sense beside another: key -> (what it needs, why).
DEPLOY_NEEDS = {
    "stop": ("start", "'stop' goes with 'start' (with 'run' Trainyard stops the app itself)"),
    "stop_timeout": ("run", "'stop_timeout' is how long Trainyard waits between TERM and KILL"
                            " when it stops a 'run' process: it needs 'run'"),
    "drain_check": ("drain", "'drain_check' tells when 'drain' is done: it needs 'drain'"),
    "drain_timeout": ("drain_check", "'drain_timeout' is how long 'drain_check' may take to"
                                     " pass: it needs 'drain_check'"),
}
HEALTH_KEYS = ("url", "expect", "timeout")
MAX_EXPECT_BYTES = 1024
COMMAND_KEYS = ("run", "junit", "timeout", "env")
DEPLOY_COMMAND_KEYS = ("run", "junit", "timeout")  # a deploy step runs in the node's environment
CACHE_KEYS = ("key", "paths")


def parse_spec(text, limits=None):
    """Parse spec text (str or bytes) into a Spec, or raise SpecError.

    Whatever the text, the outcome is a Spec or a SpecError, never another exception:
    a spec is input from a branch, and a bad one fails its build with a message.
    `limits` defaults to the operator's (SpecLimits.from_settings()).
    """
    if limits is None:
        limits = SpecLimits.from_settings()
    try:
        return _parse(text, limits)
    except SpecError:
        raise
    except RecursionError as exc:
        raise SpecError("the spec is nested too deeply to read") from exc
    except Exception as exc:  # a case no check above foresaw: still a message, not a crash
        raise SpecError(f"could not read the spec: {type(exc).__name__}: {exc}") from exc


def _parse(text, limits):
    root = compose(_decode(text, limits), limits)
    if root is None:
        raise SpecError("the file is empty")
    entries = mapping(root, "")
    _refuse_unknown(entries, TOP_LEVEL, "")
    if "checks" not in entries:
        raise SpecError("'checks' is missing", key="checks", line=line(root))
    spec = Spec(checks=_checks(entries["checks"][1], "checks", limits))
    for name, (attribute, read) in _SECTIONS.items():
        if name in entries:
            setattr(spec, attribute, read(entries[name][1], name, limits))
    if spec.cache and not spec.setup:
        raise SpecError("'cache' needs 'setup' commands to fill it", key="cache",
                        line=line(entries["cache"][0]))
    return spec


def _decode(text, limits):
    # memoryview: bytes(42) would be 42 NULs, where a number is no spec (TypeError).
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(memoryview(text))
    if len(data) > limits.max_spec_bytes:
        raise SpecError(f"the file is larger than {limits.max_spec_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError("the file is not UTF-8") from exc


def _refuse_unknown(entries, allowed, key, what="key"):
    for name, (key_node, _) in entries.items():
        if name not in allowed:
            raise SpecError(f"unknown {what} '{name}', expected one of {', '.join(allowed)}",
                            key=join(key, name), line=line(key_node))


# Commands ------------------------------------------------------------------------------

def _argv(node, key, limits):
    if isinstance(node, yaml.SequenceNode):
        argv = [scalar(item, key) for item in node.value]
    else:
        text = scalar(node, key)
        try:
            argv = shlex.split(text)
        except ValueError as exc:
            raise SpecError(f"cannot split the command: {exc}", key=key, line=line(node)) from exc
    if not argv or not argv[0]:
        raise SpecError("the command is empty", key=key, line=line(node))
    if any("\x00" in arg for arg in argv):
        raise SpecError("the command contains a NUL byte", key=key, line=line(node))
    size = command_bytes(argv)
    if size > limits.max_command_bytes:
        raise SpecError(f"the command is {size} bytes, more than the limit of"
                        f" {limits.max_command_bytes}", key=key, line=line(node))
    return argv


def _command(node, key, limits, keys=COMMAND_KEYS):
    """A command: a string, a list of arguments, or {run, junit, timeout, env}."""
    if not isinstance(node, yaml.MappingNode):
        return Command(argv=_argv(node, key, limits))
    entries = mapping(node, key)
    _refuse_unknown(entries, keys, key)
    if "run" not in entries:
        raise SpecError("'run' is missing", key=key, line=line(node))
    command = Command(argv=_argv(entries["run"][1], f"{key}.run", limits))
    if "junit" in entries:
        command.junit = _relative_path(entries["junit"][1], f"{key}.junit")
    if "timeout" in entries:
        command.timeout = _timeout(entries["timeout"][1], f"{key}.timeout", limits)
    if "env" in entries:
        command.env = _env(entries["env"][1], f"{key}.env", limits)
    return command


def _relative_path(node, key):
    path = scalar(node, key)
    parts = path.split("/")
    if (not path or path.startswith("/") or ".." in parts or "\x00" in path
            or posixpath.normpath(path) == "."):
        raise SpecError("must be a path inside the repository", key=key, line=line(node))
    return path


def _timeout(node, key, limits):
    value = scalar(node, key)
    if not SECONDS.fullmatch(value) or not 0 < int(value) <= limits.max_job_timeout:
        raise SpecError(f"must be whole seconds from 1 to {limits.max_job_timeout}", key=key,
                        line=line(node))
    return int(value)


# Sections ------------------------------------------------------------------------------

def _checks(node, key, limits):
    entries = mapping(node, key)
    if not entries:
        raise SpecError("at least one check is needed", key=key, line=line(node))
    checks = {}
    for number, (name, (key_node, value_node)) in enumerate(entries.items(), 1):
        if number > limits.max_checks:
            raise SpecError(f"too many checks: at most {limits.max_checks} are allowed",
                            key=join(key, name), line=line(key_node))
        if not CHECK_NAME.fullmatch(name):
            raise SpecError("check names are lower-case letters, digits, '-' and '_'",
                            key=join(key, name), line=line(key_node))
        checks[name] = _command(value_node, join(key, name), limits)
    return checks


def _setup(node, key, limits):
    """A list of commands, or one command written as a single string."""
    if isinstance(node, yaml.ScalarNode):
        return [_command(node, key, limits)]
    if not isinstance(node, yaml.SequenceNode):
        raise SpecError("expected a list of commands", key=key, line=line(node))
    if not node.value:
        raise SpecError("expected at least one command (or no 'setup' at all)", key=key,
                        line=line(node))
    return [_command(item, f"{key}[{i}]", limits) for i, item in enumerate(node.value)]


def _cache(node, key, limits):
    """{key: files whose contents name the cache, paths: what it saves and restores}."""
    entries = mapping(node, key)
    _refuse_unknown(entries, CACHE_KEYS, key)
    cache = {}
    for name in CACHE_KEYS:
        if name not in entries:
            raise SpecError(f"'{name}' is missing", key=key, line=line(node))
        cache[name] = _paths(entries[name][1], join(key, name))
    for item, path in zip(_items(entries["paths"][1]), cache["paths"], strict=True):
        if posixpath.normpath(path).split("/")[0] == ".git":
            raise SpecError("the cache may not hold .git", key=join(key, "paths"),
                            line=line(item))
    return cache


def _items(node):
    return node.value if isinstance(node, yaml.SequenceNode) else [node]


def _paths(node, key):
    """One path or a non-empty list of them, each inside the repository."""
    if not isinstance(node, yaml.ScalarNode | yaml.SequenceNode):
        raise SpecError("expected a path or a list of paths", key=key, line=line(node))
    if not _items(node):
        raise SpecError("expected at least one path", key=key, line=line(node))
    return [_relative_path(item, key) for item in _items(node)]


def _env(node, key, limits):
    """NAME: value pairs, values taken as written (`on` stays "on")."""
    entries = mapping(node, key)
    if len(entries) > limits.max_env:
        raise SpecError(f"more than {limits.max_env} variables", key=key, line=line(node))
    env = {}
    for name, (key_node, value_node) in entries.items():
        where = join(key, name)
        if not ENV_NAME.fullmatch(name):
            raise SpecError("variable names are letters, digits and '_', not starting with a"
                            " digit", key=where, line=line(key_node))
        if name in ("HOME", "TRAINYARD") or name.startswith("TRAINYARD_"):
            raise SpecError(f"{name} is set by Trainyard itself", key=where, line=line(key_node))
        value = scalar(value_node, where)
        if len(value.encode("utf-8")) > limits.max_command_bytes:
            raise SpecError(f"the value is longer than {limits.max_command_bytes} bytes",
                            key=where, line=line(value_node))
        env[name] = value
    return env


def _deploy(node, key, limits):
    """Commands, seconds and the health check; see DEPLOY_NEEDS for the pairs."""
    steps = {}
    entries = mapping(node, key)
    _refuse_unknown(entries, DEPLOY_KEYS, key, what="step")
    if "run" in entries and "start" in entries:
        later = max(("run", "start"), key=lambda name: line(entries[name][0]))
        raise SpecError("'run' and 'start' exclude each other: with 'run' Trainyard starts and "
                        "stops the app itself; 'start' is for an app that detaches on its own",
                        key=join(key, later), line=line(entries[later][0]))
    for name, (key_node, value_node) in entries.items():
        where = join(key, name)
        needed, why = DEPLOY_NEEDS.get(name, (None, ""))
        if needed and needed not in entries:
            raise SpecError(why, key=where, line=line(key_node))
        if name == "health":
            steps[name] = _health(value_node, where, limits)
        elif name in DEPLOY_SECONDS:
            steps[name] = _timeout(value_node, where, limits)
        else:
            steps[name] = _command(value_node, where, limits, DEPLOY_COMMAND_KEYS)
            if name == "run" and steps[name].timeout:
                raise SpecError("a 'run' process runs until the next release: it has no timeout"
                                " (health's 'timeout' says how long it may take to answer)",
                                key=join(where, "timeout"), line=line(value_node))
    return steps


def _health(node, key, limits):
    """A URL, or {url, expect, timeout} -> {"url", "expect", "timeout"}."""
    if not isinstance(node, yaml.MappingNode):
        return {"url": _health_url(node, key), "expect": "", "timeout": None}
    entries = mapping(node, key)
    _refuse_unknown(entries, HEALTH_KEYS, key)
    if "url" not in entries:
        raise SpecError("'url' is missing", key=key, line=line(node))
    health = {"url": _health_url(entries["url"][1], join(key, "url")), "expect": "",
              "timeout": None}
    if "expect" in entries:
        value_node = entries["expect"][1]
        expect = scalar(value_node, join(key, "expect"))
        if not expect or len(expect.encode("utf-8")) > MAX_EXPECT_BYTES:
            raise SpecError(f"expected the text the health answer must hold, 1 to {MAX_EXPECT_BYTES}"
                            " bytes, e.g. \"{sha}\" (the release's SHA)", key=join(key, "expect"),
                            line=line(value_node))
        health["expect"] = expect
    if "timeout" in entries:
        health["timeout"] = _timeout(entries["timeout"][1], join(key, "timeout"), limits)
    return health


def _health_url(node, key):
    url = scalar(node, key)
    try:
        filled = urllib.parse.urlsplit(url.replace("{host}", "host").replace("{port}", "1"))
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        filled = None
    if filled is None or filled.scheme not in ("http", "https") or not filled.netloc:
        raise SpecError("expected an http:// or https:// URL, e.g. http://{host}:{port}/health",
                        key=key, line=line(node))
    return url


def _environments(node, key, limits):
    if not isinstance(node, yaml.SequenceNode):
        raise SpecError("expected a list", key=key, line=line(node))
    names = [scalar(item, key) for item in node.value]
    for item, name in zip(node.value, names, strict=True):
        if name not in ENVIRONMENTS:
            raise SpecError(f"unknown environment '{name}', expected {', '.join(ENVIRONMENTS)}",
                            key=key, line=line(item))
    return names


def _train(node, key, limits):
    entries = mapping(node, key)
    _refuse_unknown(entries, ("schedule",), key)
    schedule = DEFAULT_SCHEDULE
    if "schedule" in entries:
        value_node = entries["schedule"][1]
        schedule = scalar(value_node, join(key, "schedule"))
        if len(schedule.split()) != 5:
            raise SpecError("a cron schedule has five fields", key=join(key, "schedule"),
                            line=line(value_node))
    return schedule


# Top-level key -> (Spec attribute, reader); `checks` comes first, read on its own.
_SECTIONS = {
    "setup": ("setup", _setup),
    "cache": ("cache", _cache),
    "env": ("env", _env),
    "deploy": ("deploy", _deploy),
    "smoke": ("smoke", _command),
    "acceptance": ("acceptance", _command),
    "environments": ("environments", _environments),
    "train": ("train_schedule", _train),
}
