"""Behind bin/drain and bin/undrain: the drain flag the server's /health reads.

Starting and stopping is Trainyard's job (`deploy.run` in trainyard.yml): the server
runs in the foreground, `python -m demo_app.server`.
"""

from __future__ import annotations

from demo_app import config as app_config
from demo_app.config import Config


def load_config() -> Config:
    try:
        return app_config.load()
    except ValueError as error:
        raise SystemExit(f"demo-app: {error}") from None


def drain() -> int:
    config = load_config()
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.drain_flag.touch()
    print(f"demo-app: draining ({config.drain_flag})")
    return 0


def undrain() -> int:
    config = load_config()
    config.drain_flag.unlink(missing_ok=True)
    print("demo-app: taking traffic again")
    return 0
