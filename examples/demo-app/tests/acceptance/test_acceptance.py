"""What a user sees, against --base-url, $TARGET_URL, or a local server.

Trainyard runs these against each lower environment of a train ($TARGET_URL) and gives
the SHA it deployed there ($TRAINYARD_SHA): the node must serve exactly that release.
"""

import json
import os
import re

FULL_SHA = re.compile(r"[0-9a-f]{40}")


def test_version_is_the_release_under_test(target_url, http_get):
    status, _, body = http_get(f"{target_url}/version")
    assert status == 200
    version = body.strip()
    assert FULL_SHA.fullmatch(version), f"/version is not a full commit SHA: {body!r}"
    expected = os.environ.get("TRAINYARD_SHA")
    assert version == (expected or version), f"serving {version}, not the release {expected}"


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
