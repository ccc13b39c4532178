"""The protocol: deploy a release, roll back, read the current one."""

from .base import (
    CHECKSUM_RE,
    COMMAND_TIMEOUT,
    DeployError,
    DeploySteps,
    StepFailed,
    expand,
    validate_sha,
)
from .liveness import bring_up, check_port, stop_managed
from .node import _Node

KEEP_RELEASES = 5


def deploy_release(transport, base, sha, archive_path, checksum, steps, *, env=None, log=None,
                   host=None, port=None, command_timeout=COMMAND_TIMEOUT, cancel=None, on_tick=None):
    """Unpack, install, switch, stop the old app, start the new one, prove it answers; roll
    back if anything after the switch fails.

    `env` reaches the node's commands as given (LocalTransport: the whole environment;
    SSHTransport: added to the login environment), and fills `$NAME` in their arguments.
    `host`/`port` fill the health URL; `port` is also the app port whose holder is
    checked; `host` defaults to the transport's host. `on_tick` is called a few times a
    second while commands run and health is polled (flush logs, heartbeat).

    Before the switch a failure leaves `current` untouched, and the app that runs keeps
    running (a `run:` app's port is checked before the switch too); after it, `current`
    goes back to the release it replaced and that release is started again. Success needs
    the proof `liveness` describes; `DeployResult.live` says which one held.
    """
    sha = validate_sha(sha)
    if not isinstance(checksum, str) or not CHECKSUM_RE.fullmatch(checksum):
        raise DeployError(f"not a sha256 hex digest: {checksum!r}")
    node = _Node(transport, base, log=log, env=env, timeout=command_timeout, cancel=cancel,
                 on_tick=on_tick)
    host = host or getattr(transport, "host", "127.0.0.1")
    try:
        with node.step("inspect"):
            (previous, old_previous), releases = node.inspect("current", "previous")
    except StepFailed as exc:
        return node.result(False, f"deploy of {sha} did not start: {exc}", sha=sha)
    if previous == sha:
        return _restart_current(node, sha, steps, host, port)
    try:
        _prepare(node, sha, archive_path, checksum, steps, port)
    except StepFailed as exc:
        _discard(node, sha)
        return node.result(False, f"deploy of {sha} failed before the switch, `current` is unchanged "
                           f"({previous or 'no release'}): {exc}", sha=sha, previous_sha=previous)
    try:
        with node.step("switch"):
            node.set_links(*([("previous", previous)] if previous else []), ("current", sha))
        live = bring_up(node, steps, sha, host=host, port=port, replacing=previous)
    except StepFailed as exc:
        return _undo_switch(node, sha, previous, old_previous, steps, exc, host, port)
    _prune(node, [sha, *(name for name in releases if name != sha)], protect={sha, previous})
    return node.result(True, f"{sha} is live" + (f" (replacing {previous})" if previous else ""),
                       sha=sha, previous_sha=previous, live=live)


def _prepare(node, sha, archive_path, checksum, steps, port):
    release = node.release(sha)
    tarball = f"{release}.tar.gz"
    if steps.run and port is not None:
        with node.step("port"):
            check_port(node, steps, port)
    with node.step("prepare"):
        # Leftovers of an earlier attempt at this SHA; never the live release (checked).
        node.run_all(["rm", "-rf", "--", release, f"{tarball}.part"],
                     ["mkdir", "-p", "--", release, node.path("shared")])
    with node.step("upload"):
        node.put(archive_path, f"{tarball}.part")
    with node.step("verify"):
        _verify(node, f"{tarball}.part", checksum, tarball)
    with node.step("unpack"):
        node.run_all(["tar", "-xzf", tarball, "-C", release], ["rm", "-f", "--", tarball])
    if steps.install:
        with node.step("install"):
            node.run(expand(steps.install, node.env), cwd=release, env=node.env,
                     timeout=steps.install_timeout)


# $1 the upload, $2 the expected digest, $3 its final name. Prints sha256sum's line; renames
# only on a match (sha256sum prefixes a backslash when the name needed escaping).
_VERIFY = ('line=$(sha256sum -- "$1") || exit; printf "%s\\n" "$line"; sum=${line#\\\\}; '
           'if [ "${sum%% *}" = "$2" ]; then exec mv -f -- "$1" "$3"; fi')


def _verify(node, path, checksum, final):
    """Check the upload's sha256 on the node; only a verified archive gets its final name."""
    words = node.script(_VERIFY, [path, checksum, final],
                        name="<sha256sum $1, then mv $1 $3 if the digest is $2>").split()
    got = words[0].lstrip("\\") if words else ""
    node.log(f"sha256 on the node: {got or 'nothing'}")
    if got != checksum:
        raise StepFailed(f"checksum mismatch for {path}: expected {checksum}, the node computed "
                         f"{got or 'nothing'}")
    node.log(f"as expected: renamed to {final}")


def _discard(node, sha):
    """Remove a release that never went live, so it can never become a rollback target."""
    release = node.release(sha)
    node.cancel = None  # a cancel stops the deploy, never its clean-up
    try:
        with node.step("discard"):
            node.run(["rm", "-rf", "--", release, f"{release}.tar.gz", f"{release}.tar.gz.part"])
    except StepFailed:
        node.log(f"(could not remove {release}; old releases are pruned on a later deploy)")


def _undo_switch(node, sha, previous, old_previous, steps, error, host, port):
    """After the switch something failed: put back the release that was live."""
    fields = {"sha": sha, "previous_sha": previous}
    node.cancel = None  # a cancel stops the deploy, never the way back
    node.log(f"!! rolling back: {error}")
    try:
        with node.step("rollback"):
            # None removes a link: there was no release (or no previous one) before.
            node.set_links(("current", previous), ("previous", old_previous))
    except StepFailed as again:
        return node.result(False, f"{error}; switching back failed too, `current` may still point at "
                           f"{sha}: {again}", **fields)
    if previous is None:
        _stop_failed_release(node, steps, sha, port)
        return node.result(False, f"{error}; there was no previous release, `current` removed", **fields)
    try:
        bring_up(node, steps, previous, host=host, port=port, replacing=sha, restoring=True)
    except StepFailed as again:
        return node.result(False, f"{error}; rolled back to {previous}, but it did not come back "
                           f"either: {again}", rolled_back=True, **fields)
    return node.result(False, f"{error}; rolled back to {previous} and restarted it",
                       rolled_back=True, **fields)


def _stop_failed_release(node, steps, sha, port):
    """No release to go back to: stop what the failed one may have left running."""
    if not steps.run:
        return  # `stop` would need a release folder to run in; `current` is gone
    try:
        with node.step("stop"):
            stop_managed(node, steps)
    except StepFailed:
        node.log(f"(the app of {sha} may still run)")


def _restart_current(node, sha, steps, host, port):
    node.log(f"{sha} is already current: restarting it, nothing is unpacked")
    try:
        live = bring_up(node, steps, sha, host=host, port=port, replacing=sha)
    except StepFailed as exc:
        return node.result(False, f"{sha} is already current; restarting it failed: {exc}",
                           sha=sha, previous_sha=sha)
    return node.result(True, f"{sha} was already current; restarted", sha=sha, previous_sha=sha,
                       live=live)


def _prune(node, releases, protect):
    """Keep the KEEP_RELEASES newest release folders, and always current and previous.

    `releases` are the folders newest first: those `inspect` listed, with the new one
    first (its folder is the newest), which saves listing them again."""
    try:
        with node.step("cleanup"):
            old = [node.release(name) for name in releases[KEEP_RELEASES:] if name not in protect]
            if old:
                node.run(["rm", "-rf", "--", *old])
            else:
                node.log(f"{len(releases)} release(s) on the node: none to remove")
    except StepFailed:
        node.log("(old releases stay until the next deploy)")


def rollback(transport, base, *, to_sha=None, steps=None, env=None, log=None, host=None, port=None,
             command_timeout=COMMAND_TIMEOUT, cancel=None, on_tick=None):
    """Point `current` back at `previous` (or at `to_sha`) and restart it.

    The release rolled back from becomes `previous`, so a second rollback undoes the first.
    """
    target = validate_sha(to_sha) if to_sha else None
    steps = steps or DeploySteps()
    node = _Node(transport, base, log=log, env=env, timeout=command_timeout, cancel=cancel,
                 on_tick=on_tick)
    host = host or getattr(transport, "host", "127.0.0.1")
    current = None
    try:
        with node.step("inspect"):
            current = node.read_link("current")
            target = target or node.read_link("previous")
            _check_target(node, target, current)
        with node.step("switch"):
            node.set_links(*([("previous", current)] if current else []), ("current", target))
        live = bring_up(node, steps, target, host=host, port=port, replacing=current)
    except StepFailed as exc:
        return node.result(False, f"rollback failed: {exc}", sha=target, previous_sha=current)
    return node.result(True, f"rolled back from {current or 'no release'} to {target}", sha=target,
                       previous_sha=current, rolled_back=True, live=live)


def _check_target(node, target, current):
    if target is None:
        raise StepFailed("there is no previous release to roll back to")
    if target == current:
        raise StepFailed(f"{target} is already current")
    try:
        node.run(["test", "-d", node.release(target)])
    except StepFailed as exc:
        raise StepFailed(f"release {target} is not on the node any more") from exc


def current_release(transport, base, *, timeout=COMMAND_TIMEOUT):
    """The SHA `<base>/current` points at, or None. TransportError if the node is unreachable."""
    return _Node(transport, base, timeout=timeout).read_link("current")


def stop_app(transport, base, *, stop_timeout=None, log=None, timeout=COMMAND_TIMEOUT):
    """Stop the `run:` app Trainyard started on the node at `base` (TERM, then KILL after
    `stop_timeout`), if one runs. For a node leaving service, and for tests."""
    steps = DeploySteps(stop_timeout=stop_timeout or DeploySteps.stop_timeout)
    stop_managed(_Node(transport, base, log=log, timeout=timeout), steps)
