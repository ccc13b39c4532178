"""Deploy a build's SHA to a node and record it: the Deployment row, the node's current
release, events. The protocol itself (nodes/deploy/) knows nothing of the database."""

import os
import sys
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError
from django.utils import timezone

from nodes import deploy as protocol
from nodes.models import Deployment, Node
from nodes.services.allocation import mark_unhealthy
from nodes.services.connections import get_transport
from nodes.services.health import check_node
from nodes.transports import TransportError
from pipeline.services.events import record_event
from pipeline.statemachine import transition


def archive_for(build):
    """The release archive of the build's SHA, made once from the repository's mirror."""
    from pipeline.services.git import mirror_path

    folder = Path(settings.TRAINYARD["WORKSPACE_DIR"]) / "archives" / build.repository.name
    path = folder / f"{build.sha}.tar.gz"
    if path.exists():
        return path, protocol.file_sha256(path)
    return protocol.make_archive(mirror_path(build.repository), build.sha, folder)


def step_environment(node, build):
    """What install and start see. A local node gets a whole environment built from
    scratch (no Trainyard secrets); an SSH node keeps its login environment plus these."""
    env = {
        "HOST": node.host,
        "PORT": str(node.app_port),
        "APP_STATE_DIR": f"{node.base_path.rstrip('/')}/shared/state",
        "TRAINYARD_SHA": build.sha,
        "TRAINYARD_BRANCH": build.branch,
        "TRAINYARD_NODE": node.name,
    }
    if node.transport == Node.Transport.LOCAL:
        tools = str(Path(sys.executable).parent)
        env.update({"PATH": os.pathsep.join([tools, "/usr/local/bin", "/usr/bin", "/bin"]),
                    "HOME": f"{node.base_path.rstrip('/')}/shared", "LANG": "C.UTF-8"})
    env.update({str(k): str(v) for k, v in (node.env or {}).items()})
    return env


def deploy_build(build, node, deploy_spec, *, log, on_tick=None):
    """Deploy `build.sha` to `node` (which the build holds). Returns the Deployment."""
    from pipeline.spec import Spec

    steps = protocol.DeploySteps.from_spec(Spec.from_dict({"checks": {}, "deploy": deploy_spec}).deploy)
    try:
        deployment = Deployment.objects.create(node=node, build=build, sha=build.sha,
                                               branch=build.branch, previous_sha=node.current_sha)
    except IntegrityError:
        log(f"{node.name} is already being deployed to\n")
        return Deployment(node=node, sha=build.sha, status=Deployment.Status.FAILED,
                          message=f"{node.name} is already being deployed to")
    record_event("deployment.started", subject=deployment, new="running",
                 message=f"deploying {build.sha[:10]} ({build.branch}) to {node.name}")
    lines = []

    def log_line(line):
        lines.append(line)
        log(line + "\n")

    result = _run_protocol(build, node, steps, log_line, on_tick)
    _record(deployment, node, build, steps, result, "\n".join(lines))
    return deployment


def _run_protocol(build, node, steps, log_line, on_tick):
    try:
        archive, checksum = archive_for(build)
        with get_transport(node) as transport:
            return protocol.deploy_release(
                transport, node.base_path, build.sha, archive, checksum, steps,
                env=step_environment(node, build), log=log_line, host=node.host,
                port=node.app_port, on_tick=on_tick)
    except (TransportError, protocol.DeployError, OSError) as exc:
        log_line(f"!! {exc}")
        return protocol.DeployResult(ok=False, message=str(exc), sha=build.sha)


def _record(deployment, node, build, steps, result, log_text):
    now = timezone.now()
    if result.ok:
        url = protocol.health_url(steps.health, node.host, node.app_port) if steps.health else ""
        Node.objects.filter(pk=node.pk).update(current_sha=build.sha, current_branch=build.branch,
                                               last_changed_at=now, health_url=url)
        status = Deployment.Status.SUCCEEDED
    else:
        status = Deployment.Status.ROLLED_BACK if result.rolled_back else Deployment.Status.FAILED
        _after_failure(node)
    transition(deployment, status, finished_at=now, message=result.message[:2000], log=log_text)


def _after_failure(node):
    """A failed deploy may mean a dead node: check it now, and if it is down, take it out
    of the pool and free its branch (the next build gets another node)."""
    node.refresh_from_db()
    if check_node(node) == Node.Health.UNHEALTHY:
        mark_unhealthy(node, node.health_message)
