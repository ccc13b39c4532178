"""The deploy protocol on one node, over any Transport (local or SSH). No database here:
the caller records what `DeployResult` says.

Layout on the node, Capistrano-style:

    <base>/releases/<sha>/   one folder per release, unpacked from `git archive`
    <base>/current           symlink -> releases/<sha>, switched atomically (rename)
    <base>/previous          symlink -> the release `current` replaced: the rollback target
    <base>/shared/           for the application's own use; never touched, except:
    <base>/shared/trainyard/ a `run:` app's app.pid, app.start and app.log (Trainyard's)

Every command is an argument list; the SSH transport quotes each argument for the node's
shell. Steps of several plain commands (`rm` then `mkdir`, `ln` then `mv`...) send them as
one `sh -c 'a && b'` whose every argument is quoted too: one SSH channel (a round trip and
a process on the node) per step rather than per command, which is most of a deploy's cost
when 50 nodes are deployed at once.

Health is checked from the controller with urllib (`check_health`): curl may not
exist on a node, and an answer from outside also proves the node is reachable. An app that
listens only on the node's loopback therefore needs a URL reachable from the controller.

Deploying the release `current` already points at only restarts it and checks health:
its folder is in use and is never unpacked over.

The app is a managed process (`run:`: Trainyard starts it detached, stops it before the
next release) or manages itself (`start`/`stop`). A release is live only with proof that
the new release answers, never the old process still holding the port (`liveness`).

Modules: `base` (errors, `DeploySteps`, `DeployResult`), `archive` (the release archive,
built on the controller), `health` (`check_health`), `node` (running commands on the
node), `app` (the sh script that starts, stops and probes a `run:` app and who holds its
port), `liveness` (stop, start, prove), `protocol` (`deploy_release`, `rollback`,
`current_release`, `stop_app`), `rollout` (the production rollout over many nodes:
`rollout`, `RolloutTarget`, `NodeOutcome`, `RolloutResult`).
"""

from .archive import file_sha256, make_archive
from .base import (
    CHECKSUM_RE,
    COMMAND_TIMEOUT,
    HEALTH_TIMEOUT,
    INSTALL_TIMEOUT,
    SHA_RE,
    START_TIMEOUT,
    STOP_TIMEOUT,
    DeployError,
    DeployResult,
    DeploySteps,
    StepFailed,
    StepRecord,
    expand,
    validate_sha,
)
from .health import HEALTH_INTERVAL, HEALTH_REQUEST_TIMEOUT, check_health, health_url
from .liveness import UNPROVEN
from .protocol import KEEP_RELEASES, current_release, deploy_release, rollback, stop_app
from .rollout import NodeOutcome, RolloutResult, RolloutTarget, plan_batches, rollout

__all__ = [
    "CHECKSUM_RE", "COMMAND_TIMEOUT", "HEALTH_INTERVAL", "HEALTH_REQUEST_TIMEOUT", "HEALTH_TIMEOUT",
    "INSTALL_TIMEOUT", "KEEP_RELEASES", "SHA_RE", "START_TIMEOUT", "DeployError", "DeployResult",
    "DeploySteps", "StepFailed", "StepRecord", "check_health", "current_release", "deploy_release",
    "file_sha256", "health_url", "make_archive", "rollback", "validate_sha", "STOP_TIMEOUT",
    "UNPROVEN", "stop_app", "expand", "NodeOutcome", "RolloutResult", "RolloutTarget",
    "plan_batches", "rollout",
]
