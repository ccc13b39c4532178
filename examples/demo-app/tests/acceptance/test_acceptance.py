"""What a user sees, against --base-url, $TARGET_URL, or a local server."""

import json


def test_home_page_greets_the_world(target_url, http_get):
    status, headers, body = http_get(f"{target_url}/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "Hello, world!" in body


def test_hello_greets_ada(target_url, http_get):
    status, _, body = http_get(f"{target_url}/hello?name=Ada")
    assert status == 200
    assert json.loads(body)["greeting"] == "Hello, Ada!"


def test_home_page_shows_the_deployed_version(target_url, http_get):
    version = http_get(f"{target_url}/version")[2].strip()
    assert version in http_get(f"{target_url}/")[2]
