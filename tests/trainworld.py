"""A world for deploy-train tests: a real git repository of a tiny web app whose commits
are written by alice and bob, green master builds run by the real worker (so release
candidates are real), and local nodes for staging, preview, pre-prod and production whose
apps really run (stopped when the test ends)."""

import urllib.request
from dataclasses import dataclass, field

from nodes.models import Node
from pipeline.models import Build, DeployTrain, ReleaseCandidate
from pipeline.services.builds import request_build
from tests.factories import RepositoryFactory
from tests.helpers import GitRepo, build_ended, free_port, wait_until

ALICE = ("Alice", "alice@example.com")
BOB = ("Bob", "bob@example.com")
CAROL = ("Carol Contractor", "carol@elsewhere.example")  # maps to no user

# An environment named in `broken` fails its acceptance tests there; a node named in
# `crash-on` makes the app exit at once there (a failed health check in production).
SPEC = """\
checks:
  unit: python3 -c "print('unit ok')"
deploy:
  run: python3 app.py
  health: {{url: "http://{{host}}:{{port}}/version", expect: "{{sha}}", timeout: 10}}
  drain: python3 drain.py
  drain_check: python3 drain.py --check
  drain_timeout: 10
acceptance: python3 acceptance.py
environments: [{environments}]
"""

APP = '''\
"""/version answers the SHA this release was deployed as."""
import os
import pathlib
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

crash_on = pathlib.Path("crash-on")
if crash_on.exists() and os.environ["TRAINYARD_NODE"] in crash_on.read_text().split():
    sys.exit("crashing on purpose on " + os.environ["TRAINYARD_NODE"])


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/version": os.environ.get("TRAINYARD_SHA", "")}.get(self.path, "ok")
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
'''

# drain: the node's shared state records it; --check passes once it is recorded.
DRAIN = '''\
import os, pathlib, sys
marker = pathlib.Path(os.environ["APP_STATE_DIR"]) / "drained"
if "--check" in sys.argv:
    sys.exit(0 if marker.exists() else 1)
marker.parent.mkdir(parents=True, exist_ok=True)
marker.write_text(os.environ.get("TRAINYARD_SHA", ""))
'''

ACCEPTANCE = '''\
import os, pathlib, sys, urllib.request
broken = pathlib.Path("broken")
if broken.exists() and os.environ["TARGET_ENVIRONMENT"] in broken.read_text().split():
    sys.exit("acceptance: broken on purpose in " + os.environ["TARGET_ENVIRONMENT"])
served = urllib.request.urlopen(os.environ["TARGET_URL"] + "version", timeout=5).read().decode()
sys.exit(0 if served == os.environ["TRAINYARD_SHA"] else f"serving {served}")
'''


def serving(node):
    """What the node's app answers at /version, or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"{node.url}version", timeout=3) as response:
            return response.read().decode()
    except OSError:
        return None


@dataclass
class TrainWorld:
    repository: object
    repo: object  # tests.helpers.GitRepo
    tmp_path: object
    nodes: dict = field(default_factory=dict)

    def commit(self, files, message, author=ALICE):
        return self.repo.commit(files, message=message, author=author)

    def green(self, timeout=120):
        """A master build of master's head, run by the worker; its candidate."""
        build, _ = request_build(self.repository, "master")
        build = build_ended(build, timeout=timeout)
        assert build.status == Build.Status.PASSED, build.message
        return ReleaseCandidate.objects.get(repository=self.repository, sha=build.sha)

    def add_nodes(self, environments=("staging", "preview", "preprod"), production=3):
        for environment in environments:
            self._node(f"{environment}-1", environment)
        for index in range(1, production + 1):
            self._node(f"prod-{index}", Node.Environment.PRODUCTION, off_cycle=index == 1)

    def _node(self, name, environment, **fields):
        node = Node.objects.create(
            name=name, environment=environment, transport=Node.Transport.LOCAL,
            repository=self.repository, app_port=free_port(), health=Node.Health.HEALTHY,
            base_path=str(self.tmp_path / "nodes" / name), **fields)
        self.nodes[name] = node
        return node

    def node(self, name):
        return Node.objects.get(pk=self.nodes[name].pk)

    def stop_apps(self):
        from nodes.deploy import stop_app
        from nodes.services.connections import get_transport

        for node in Node.objects.filter(pk__in=[n.pk for n in self.nodes.values()]):
            with get_transport(node) as transport:
                stop_app(transport, node.base_path)


def wait_for_train(train, *statuses, timeout=120):
    """Wait until the train is in one of `statuses`; returns it refreshed."""
    def there():
        train.refresh_from_db()
        return train.status in statuses

    wait_until(there, timeout=timeout,
               message=f"train #{train.pk} to be {' or '.join(statuses)} (it is {train.status}: "
                       f"{train.message})")
    return train


def active(train):
    return DeployTrain.objects.get(pk=train.pk)


def make_world(tmp_path, environments=("staging",)):
    repo = GitRepo(tmp_path / "origin")
    repo.commit({"trainyard.yml": SPEC.format(environments=", ".join(environments)),
                 "app.py": APP, "drain.py": DRAIN, "acceptance.py": ACCEPTANCE},
                message="The app", author=ALICE)
    repository = RepositoryFactory(name="shop", clone_url=str(repo.path))
    world = TrainWorld(repository, repo, tmp_path)
    world.add_nodes(environments)
    return world
