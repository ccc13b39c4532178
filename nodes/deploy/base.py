"""What every part of the deploy protocol shares: errors, inputs, results, default timeouts."""

import re
from dataclasses import dataclass, field

SHA_RE = re.compile(r"[0-9a-f]{40}")  # always fullmatch: `$` would let a trailing newline in
CHECKSUM_RE = re.compile(r"[0-9a-f]{64}")
COMMAND_TIMEOUT = 120  # mkdir, tar, ln...: generous, a big archive takes a while to unpack
INSTALL_TIMEOUT = 1800
START_TIMEOUT = 300
HEALTH_TIMEOUT = 60.0


class DeployError(ValueError):
    """Bad input (a SHA that is not 40 lowercase hex) or an archive that cannot be built."""


class StepFailed(Exception):
    """One step of the protocol failed; the message says which and why."""


def validate_sha(sha):
    if not isinstance(sha, str) or not SHA_RE.fullmatch(sha):
        raise DeployError(f"not a full commit SHA (40 lowercase hex): {sha!r}")
    return sha


@dataclass
class DeploySteps:
    """What the spec's `deploy:` section says to run (argv lists) and where health answers."""

    install: list | None = None
    start: list | None = None
    health: str | None = None  # URL template, e.g. "http://{host}:{port}/health"
    install_timeout: float = INSTALL_TIMEOUT
    start_timeout: float = START_TIMEOUT
    health_timeout: float = HEALTH_TIMEOUT

    @classmethod
    def from_spec(cls, deploy):
        """From `Spec.deploy` ({step: Command | url}); a Command's own timeout wins."""
        steps = cls(health=deploy.get("health"))
        for name in ("install", "start"):
            command = deploy.get(name)
            if command is not None:
                setattr(steps, name, list(getattr(command, "argv", command)))
                if getattr(command, "timeout", None):
                    setattr(steps, f"{name}_timeout", command.timeout)
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
