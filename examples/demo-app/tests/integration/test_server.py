"""The real HTTP server, in-process on an ephemeral port."""

import json

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_health(app_server, http_get):
    status, headers, body = http_get(f"{app_server}/health")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "ok", "sha": SHA}


def test_version(app_server, http_get):
    status, _, body = http_get(f"{app_server}/version")
    assert (status, body) == (200, SHA)


def test_hello(app_server, http_get):
    status, _, body = http_get(f"{app_server}/hello?name=Grace%20Hopper")
    assert status == 200
    assert json.loads(body) == {"greeting": "Hello, Grace Hopper!"}


def test_unknown_path(app_server, http_get):
    assert http_get(f"{app_server}/missing")[0] == 404


def test_drain_and_undrain(app_server, app_config_for_test, http_get):
    app_config_for_test.drain_flag.touch()
    status, _, body = http_get(f"{app_server}/health")
    assert (status, json.loads(body)) == (503, {"status": "draining", "sha": SHA,
                                              "in_flight": 0})
    # Draining only fails the health check: real requests are still served.
    assert http_get(f"{app_server}/version")[0] == 200
    app_config_for_test.drain_flag.unlink()
    assert http_get(f"{app_server}/health")[0] == 200
