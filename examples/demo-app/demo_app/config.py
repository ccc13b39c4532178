"""Runtime settings, read from environment variables (shared by the server and bin/)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent.parent
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
UNKNOWN_SHA = "unknown"
DRAIN_FLAG = "draining"


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    sha: str
    state_dir: Path

    @property
    def log_file(self) -> Path:
        return self.state_dir / "app.log"

    @property
    def drain_flag(self) -> Path:
        return self.state_dir / DRAIN_FLAG

    def is_draining(self) -> bool:
        # A file rather than in-memory state: bin/drain works without talking to the server.
        return self.drain_flag.exists()


def resolve_sha(env: Mapping[str, str], app_dir: Path = APP_DIR) -> str:
    """APP_SHA wins, then the REVISION file Trainyard writes into the release folder."""
    sha = env.get("APP_SHA", "").strip()
    if sha:
        return sha
    try:
        lines = (app_dir / "REVISION").read_text(encoding="utf-8").split()
    except OSError:
        return UNKNOWN_SHA
    return lines[0] if lines else UNKNOWN_SHA


def default_state_dir(env: Mapping[str, str], port: int) -> Path:
    # One slot per port, outside the release folder: a new release started from another
    # folder still finds (and replaces) the instance the previous release started.
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local/state")
    return Path(base) / "demo-app" / f"port-{port}"


def parse_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"PORT must be a number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"PORT must be between 0 and 65535, got {port}")
    return port


def load(env: Mapping[str, str] | None = None, app_dir: Path = APP_DIR) -> Config:
    env = os.environ if env is None else env
    port = parse_port(env.get("PORT") or str(DEFAULT_PORT))
    state_dir = Path(env.get("APP_STATE_DIR") or default_state_dir(env, port)).absolute()
    return Config(
        host=env.get("HOST") or DEFAULT_HOST,
        port=port,
        sha=resolve_sha(env, app_dir),
        state_dir=state_dir,
    )
