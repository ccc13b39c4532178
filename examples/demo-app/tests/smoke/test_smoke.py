"""Quick checks against a deployment: --base-url, $TARGET_URL, or a local server."""

import json
import os
import re

SHA_OR_UNKNOWN = re.compile(r"^([0-9a-f]{40}|unknown)$")


def test_health_is_ok(target_url, http_get):
    status, _, body = http_get(f"{target_url}/health")
    assert status == 200, body
    assert json.loads(body)["status"] == "ok"


def test_version_is_a_sha(target_url, http_get):
    status, _, body = http_get(f"{target_url}/version")
    assert status == 200
    assert SHA_OR_UNKNOWN.match(body.strip()), body


def test_the_deployed_release_is_the_one_built(target_url, http_get):
    # Trainyard gives its smoke tests the build's SHA: the node must serve that release,
    # not an older one still holding the port. Run by hand, any SHA will do.
    expected = os.environ.get("TRAINYARD_SHA")
    body = http_get(f"{target_url}/version")[2].strip()
    assert body == expected if expected else SHA_OR_UNKNOWN.match(body), body
