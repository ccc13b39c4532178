"""Shared fixtures: an in-process server, an HTTP helper and the target URL."""

from __future__ import annotations

import os
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.client import HTTPMessage
from pathlib import Path
from urllib.error import HTTPError

import pytest

from demo_app import config as app_config
from demo_app.config import Config
from demo_app.server import DemoServer

Fetch = Callable[[str], tuple[int, HTTPMessage, str]]
FULL_SHA = re.compile(r"[0-9a-f]{40}")
# The release a local fallback server reports when this folder has none: made up, but full
# length, as a deployed release's is.
LOCAL_SHA = "0123456789abcdef0123456789abcdef01234567"
# Tests talk to the app directly, never through a proxy configured in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        parser.addoption(
            "--base-url",
            dest="base_url",
            default=None,
            help="URL of a running deployment for smoke/acceptance (else $TARGET_URL)",
        )
    except ValueError:
        pass  # pytest-base-url already provides the same option.


def fetch(url: str) -> tuple[int, HTTPMessage, str]:
    try:
        with _DIRECT.open(url, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except HTTPError as error:
        with error:
            return error.code, error.headers, error.read().decode()


@contextmanager
def serve(config: Config) -> Iterator[str]:
    """Run the server in a thread on an ephemeral port; yield its base URL."""
    server = DemoServer(config, ("127.0.0.1", 0))
    # A short poll interval keeps shutdown() (and so each test) fast.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def local_config(state_dir: Path, sha: str | None = None) -> Config:
    config = app_config.load(os.environ)
    return replace(config, state_dir=state_dir, sha=sha or config.sha)


@pytest.fixture(scope="session")
def http_get() -> Fetch:
    return fetch


@pytest.fixture
def app_config_for_test(tmp_path: Path) -> Config:
    return local_config(tmp_path / "state", sha="0123456789abcdef0123456789abcdef01234567")


@pytest.fixture
def app_server(app_config_for_test: Config) -> Iterator[str]:
    app_config_for_test.state_dir.mkdir(parents=True, exist_ok=True)
    with serve(app_config_for_test) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def target_url(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory):
    """--base-url, else $TARGET_URL, else a server started here so the suite runs standalone."""
    url = pytestconfig.getoption("base_url", None) or os.environ.get("TARGET_URL")
    if url:
        yield url.rstrip("/")
        return
    if os.environ.get("TRAINYARD_SHA"):
        # Under Trainyard a local server would test this checkout instead of the deployment.
        pytest.fail("TRAINYARD_SHA is set but TARGET_URL is not: no deployment to test")
    config = local_config(tmp_path_factory.mktemp("state"))
    sha = config.sha if FULL_SHA.fullmatch(config.sha) else LOCAL_SHA
    with serve(replace(config, sha=sha)) as base_url:
        yield base_url
