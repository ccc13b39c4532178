"""What every part of the deploy protocol shares: errors, inputs, results, default timeouts."""

import re
from dataclasses import dataclass, field

SHA_RE = re.compile(r"[0-9a-f]{40}")  # always fullmatch: `$` would let a trailing newline in
CHECKSUM_RE = re.compile(r"[0-9a-f]{64}")
COMMAND_TIMEOUT = 120  # mkdir, tar, ln...: generous, a big archive takes a while to unpack
INSTALL_TIMEOUT = 1800
START_TIMEOUT = 300
STOP_COMMAND_TIMEOUT = 120
STOP_TIMEOUT = 10  # a `run` process: seconds from TERM to KILL
DRAIN_TIMEOUT = 60  # how long `drain_check` may take to pass (the production rollout)
HEALTH_TIMEOUT = 60.0
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


class DeployError(ValueError):
    """Bad input (a SHA that is not 40 lowercase hex) or an archive that cannot be built."""


class StepFailed(Exception):
    """One step of the protocol failed; the message says which and why."""


def validate_sha(sha):
    if not isinstance(sha, str) or not SHA_RE.fullmatch(sha):
        raise DeployError(f"not a full commit SHA (40 lowercase hex): {sha!r}")
    return sha


def expand(argv, env):
    """`$NAME` and `${NAME}` naming a variable of `env` (what Trainyard passes the step:
    HOST, PORT...) become its value; any other `$` text stays as written, so a `sh -c`
    script still sees its own `$1` or `$HOME`. Still an argument list: no shell runs it."""
    env = env or {}

    def value(match):
        name = match.group(1) or match.group(2)
        return str(env[name]) if name in env else match.group(0)

    return [_VARIABLE.sub(value, arg) for arg in argv]


@dataclass
class DeploySteps:
    """What the spec's `deploy:` section says (argv lists, seconds) and where health answers.

    `run` (a process Trainyard keeps running) and `start`/`stop` (an app that detaches and
    stops on its own) exclude each other; the spec parser refuses both at once.
    """

    install: list | None = None
    run: list | None = None
    start: list | None = None
    stop: list | None = None
    health: str | None = None  # URL template, e.g. "http://{host}:{port}/health"
    health_expect: str = ""  # text the health body must hold; "{sha}" is the release's SHA
    install_timeout: float = INSTALL_TIMEOUT
    start_timeout: float = START_TIMEOUT
    stop_command_timeout: float = STOP_COMMAND_TIMEOUT
    stop_timeout: float = STOP_TIMEOUT
    health_timeout: float = HEALTH_TIMEOUT
    # Read by the production rollout (trains), not by deploy_release.
    drain: list | None = None
    drain_check: list | None = None
    drain_timeout: float = DRAIN_TIMEOUT

    @classmethod
    def from_spec(cls, deploy):
        """From `Spec.deploy`; a Command's own timeout wins."""
        health = deploy.get("health")
        if isinstance(health, str):  # a spec stored before health took a mapping
            health = {"url": health}
        steps = cls()
        if health:
            steps.health, steps.health_expect = health["url"], health.get("expect") or ""
            steps.health_timeout = health.get("timeout") or HEALTH_TIMEOUT
        for name, timeout in (("install", "install_timeout"), ("run", None),
                              ("start", "start_timeout"), ("stop", "stop_command_timeout"),
                              ("drain", None), ("drain_check", None)):
            command = deploy.get(name)
            if command is not None:
                setattr(steps, name, list(getattr(command, "argv", command)))
                if timeout and getattr(command, "timeout", None):
                    setattr(steps, timeout, command.timeout)
        steps.stop_timeout = deploy.get("stop_timeout") or STOP_TIMEOUT
        steps.drain_timeout = deploy.get("drain_timeout") or DRAIN_TIMEOUT
        return steps


@dataclass
class StepRecord:
    name: str
    ok: bool
    duration: float
    detail: str = ""


@dataclass
class DeployResult:
    ok: bool
    message: str
    sha: str | None = None
    previous_sha: str | None = None
    rolled_back: bool = False
    steps: list = field(default_factory=list)
    live: str = ""  # on success: what proves the new release answers, or that nothing does
