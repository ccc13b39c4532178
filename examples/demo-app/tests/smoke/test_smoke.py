"""Quick checks against a deployment: --base-url, $TARGET_URL, or a local server."""

import json
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
