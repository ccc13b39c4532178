import json
from pathlib import Path

import pytest

from demo_app import config as app_config
from demo_app.config import Config
from demo_app.server import handle_request

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config("127.0.0.1", 0, SHA, tmp_path)


def test_health_is_ok(config):
    response = handle_request(config, "GET", "/health")
    assert response.status == 200
    assert json.loads(response.body) == {"status": "ok", "sha": SHA}


def test_health_is_503_while_draining_and_counts_the_other_requests(config):
    config.drain_flag.touch()
    response = handle_request(config, "GET", "/health", others_in_flight=2)
    assert response.status == 503
    assert json.loads(response.body) == {"status": "draining", "sha": SHA, "in_flight": 2}


def test_version_is_the_sha(config):
    response = handle_request(config, "GET", "/version")
    assert (response.status, response.body) == (200, SHA.encode())
    assert response.content_type.startswith("text/plain")


def test_hello_greets_by_name(config):
    response = handle_request(config, "GET", "/hello?name=Ada")
    assert json.loads(response.body) == {"greeting": "Hello, Ada!"}


def test_index_shows_greeting_and_escaped_sha(config):
    body = handle_request(config, "GET", "/").body.decode()
    assert "Hello, world!" in body and SHA in body
    hostile = Config("h", 0, "<script>", config.state_dir)
    assert "<script>" not in handle_request(hostile, "GET", "/").body.decode()


def test_unknown_path_is_404_and_post_is_405(config):
    assert handle_request(config, "GET", "/nope").status == 404
    assert handle_request(config, "POST", "/health").status == 405


def test_sha_comes_from_env_then_revision_file(tmp_path):
    assert app_config.resolve_sha({}, tmp_path) == "unknown"
    (tmp_path / "REVISION").write_text("abc123\n")
    assert app_config.resolve_sha({}, tmp_path) == "abc123"
    assert app_config.resolve_sha({"APP_SHA": "def456"}, tmp_path) == "def456"


def test_load_defaults_and_overrides(tmp_path):
    defaults = app_config.load({"HOME": str(tmp_path)}, tmp_path)
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8080)
    assert defaults.state_dir == tmp_path / ".local/state/demo-app/port-8080"
    env = {"PORT": "9001", "HOST": "0.0.0.0", "APP_STATE_DIR": str(tmp_path / "s")}
    custom = app_config.load(env, tmp_path)
    assert (custom.host, custom.port, custom.state_dir) == ("0.0.0.0", 9001, tmp_path / "s")


def test_bad_port_is_rejected():
    with pytest.raises(ValueError, match="PORT"):
        app_config.parse_port("http")
