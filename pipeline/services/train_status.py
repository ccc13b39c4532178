"""Reading trains: the status every door shows, and `!why` in one sentence."""

from pipeline.models import Approval, Build, DeployTrain, Job, PullRequest, ReleaseCandidate
from pipeline.services import git
from pipeline.services.train_locks import blocking_lock, describe_lock, freeze_now

T = DeployTrain.Status
PRODUCTION = "production"


def _iso(value):
    return value.isoformat() if value else None


def _node_row(node):
    return {"name": node.name, "url": node.url, "sha": node.current_sha,
            "health": node.health_shown, "off_cycle": node.off_cycle,
            "draining": node.draining}


def train_status(train):
    """Everything a door shows of a train, as plain data (JSON-ready)."""
    from nodes.models import Node
    from pipeline.services.trains import train_authors
    from pipeline.spec import Spec

    repository = train.repository
    builds = list(train.builds.order_by("id"))
    jobs = {job.name: job for job in Job.objects.filter(build__in=builds).order_by("id")}
    spec = Spec.from_dict(builds[-1].spec) if builds and builds[-1].spec else None
    environments = ([] if train.kind == DeployTrain.Kind.ROLLBACK or spec is None
                    else list(spec.environments))
    nodes = list(Node.objects.usable_by(repository).filter(
        environment__in=[*environments, PRODUCTION]).order_by("environment", "-off_cycle", "name"))
    env_rows = []
    for name in environments:
        deploy, acceptance = jobs.get(f"deploy-{name}"), jobs.get(f"acceptance-{name}")
        env_rows.append({
            "name": name,
            "status": _environment_status(train, name, environments, deploy, acceptance),
            "deploy": _job_row(deploy),
            "acceptance": _job_row(acceptance),
            "nodes": [_node_row(node) for node in nodes if node.environment == name],
        })
    production = jobs.get(PRODUCTION)
    answers = {a.user_id: a for a in Approval.objects.filter(train=train)}
    authors = train_authors(train)
    others = [a for uid, a in answers.items() if uid not in {u.pk for u in authors}]
    commits = list(train.train_commits.select_related("commit", "author", "pull_request"))
    unmapped = {}
    for row in commits:
        if row.author_id is None and not row.is_merge:
            unmapped.setdefault(row.commit.author_email or row.commit.author_name,
                                {"name": row.commit.author_name, "email": row.commit.author_email})
    lock = blocking_lock(repository, train.environment) if train.environment else None
    return {
        "id": train.pk,
        "repository": repository.name,
        "kind": train.kind,
        "status": train.status,
        "status_label": train.get_status_display().lower(),
        "active": train.is_active,
        "head_sha": train.head_sha,
        "base_sha": train.base_sha,
        "environment": train.environment,
        "message": train.message,
        "url": train.get_absolute_url(),
        "created_at": _iso(train.created_at),
        "finished_at": _iso(train.finished_at),
        "started_by": train.started_by.get_username() if train.started_by_id else None,
        "forced_by": train.forced_by.get_username() if train.forced_by_id else None,
        "force_reason": train.force_reason,
        "environments": env_rows,
        "production": {
            "status": _production_status(train, production),
            "job": _job_row(production),
            "nodes": [_node_row(node) for node in nodes if node.environment == PRODUCTION],
        },
        "authors": [_answer_row(user, answers.get(user.pk)) for user in authors],
        "other_answers": [_answer_row(a.user, a) for a in others],
        "unmapped_authors": list(unmapped.values()),
        "commits": [{
            "sha": row.commit.sha, "subject": row.commit.subject,
            "author_name": row.commit.author_name,
            "author": row.author.get_username() if row.author_id else None,
            "pull_request": row.pull_request.number if row.pull_request_id else None,
            "is_revert": row.commit.is_revert or bool(row.reverts), "reverts": row.reverts,
            "is_merge": row.is_merge,
        } for row in commits],
        "lock": ({"environment": lock.environment, "reason": lock.reason,
                  "locked_by": lock.locked_by.get_username() if lock.locked_by_id else None,
                  "expires_at": _iso(lock.expires_at), "text": describe_lock(lock)}
                 if lock else None),
    }


def _answer_row(user, approval):
    return {"username": user.get_username(),
            "answer": approval.verdict if approval else None,
            "reason": approval.reason if approval else "",
            "answered_at": _iso(approval.created_at) if approval else None}


def _job_row(job):
    if job is None:
        return None
    return {"id": job.pk, "build_id": job.build_id, "status": job.status,
            "message": job.message, "url": job.build.get_absolute_url() + f"#job-{job.pk}"}


def _environment_status(train, name, environments, deploy, acceptance):
    """pending, waiting (locked), deploying, testing, passed or failed."""
    for job, running in ((acceptance, "testing"), (deploy, "deploying")):
        if job is None:
            continue
        if job.status in Job.ACTIVE:
            return running
        if job.status != Job.Status.PASSED:
            return "failed"
        if job is acceptance or acceptance is None and train.environment != name:
            return "passed"
    if deploy is not None and deploy.status == Job.Status.PASSED:
        return "passed" if train.status not in (T.DEPLOYING_LOWER, T.TESTING) else "testing"
    if train.environment == name and train.status == T.DEPLOYING_LOWER and train.is_active:
        return "waiting"
    return "pending"


def _production_status(train, job):
    if job is None:
        if train.environment == PRODUCTION and train.is_active:
            return "waiting"
        return "pending"
    if job.status in Job.ACTIVE:
        return "deploying"
    return "deployed" if job.status == Job.Status.PASSED else "failed"


# !why ------------------------------------------------------------------------------------

def why(repository, ref):
    """One sentence: what `ref` (a SHA or a branch) waits for and what would move it."""
    ref = (ref or "").strip()
    if not ref:
        return "usage: !why <sha|branch>"
    if git.SHA.match(ref):
        return _why_sha(repository, ref, label=ref[:10])
    try:
        git.validate_branch(ref)
        sha = git.resolve_branch(repository, ref)  # fetched: a mirror may not exist yet
    except git.InvalidRef:
        return f"{ref} is neither a branch of {repository.name} nor a full SHA"
    except (git.GitError, OSError) as exc:
        return f"cannot read {repository.name} now: {exc}"
    if ref == repository.default_branch:
        return _why_sha(repository, sha, label=f"{ref} ({sha[:10]})")
    return _why_branch(repository, ref, sha)


def _why_branch(repository, branch, sha):
    pr = (PullRequest.objects.filter(repository=repository, branch=branch)
          .order_by("-number").first())
    build = (Build.objects.filter(repository=repository, branch=branch, kind=Build.Kind.BRANCH)
             .order_by("-id").first())
    if pr and pr.state == PullRequest.State.MERGED and pr.merge_sha:
        return _why_sha(repository, pr.merge_sha, label=f"{branch} (merged as {pr.merge_sha[:10]})")
    if build is None or build.sha != sha:
        return f"{branch} at {sha[:10]} has not been built: !bb {branch} builds it"
    if build.is_active:
        waiting = build.message or "its checks"
        return f"{branch} waits for build #{build.pk} ({build.status}): {waiting}"
    if build.status != Build.Status.PASSED:
        return (f"{branch}'s build #{build.pk} {build.status}"
                f"{': ' + build.message if build.message else ''}; push a fix and !bb {branch}")
    if pr is None:
        return f"{branch} is green; it needs a pull request to be merged"
    if pr.state != PullRequest.State.OPEN:
        return f"{branch}'s pull request #{pr.number} is {pr.state}"
    needed, has = repository.lgtms_required, pr.counted_lgtms().count()
    if has < needed:
        return (f"#{pr.number} is good to merge and waits for {needed - has} more LGTM"
                f"{'' if needed - has == 1 else 's'}")
    return f"#{pr.number} is good to merge and has its LGTMs: merge it"


def _why_sha(repository, sha, *, label):
    from pipeline.services.trains import production_sha

    production = production_sha(repository)
    if production and (sha == production or _contains(repository, production, sha)):
        return f"{label} is in production ({production[:10]}): nothing to wait for"
    active = DeployTrain.objects.active().filter(repository=repository).first()
    if active and (active.head_sha == sha or _contains(repository, active.head_sha, sha)):
        return f"{label} rides train #{active.pk}, which {_train_waits(active)}"
    master = (Build.objects.filter(repository=repository, sha=sha, kind=Build.Kind.MASTER)
              .order_by("-id").first())
    if master and master.is_active:
        return f"{label} waits for its master build #{master.pk} ({master.status})"
    if master and master.status != Build.Status.PASSED:
        return (f"{label}'s master build #{master.pk} {master.status}: it never becomes a "
                "release candidate; a fix must land on top")
    covering = [c for c in ReleaseCandidate.objects.filter(repository=repository).order_by("-id")[:20]
                if c.sha == sha or _contains(repository, c.sha, sha)]
    if not covering:
        return f"{label} waits for a green master build that includes it"
    if window := freeze_now(repository):
        return f"{label} is a release candidate; no train starts while frozen ({window})"
    if active:
        return (f"{label} is a release candidate waiting for the next train: train "
                f"#{active.pk} {_train_waits(active)}")
    return (f"{label} is a release candidate waiting for the next train (the schedule, or "
            "`train start`)")


def _contains(repository, descendant, ancestor):
    try:
        return git.mirror_is_ancestor(repository, ancestor, descendant)
    except (git.GitError, git.InvalidRef):
        return False


def _train_waits(train):
    """'is awaiting approval: waiting for alice to say !good' and the like."""
    if train.message.startswith("waiting"):
        text = f"is {train.message}"
    else:
        text = f"is {train.get_status_display().lower()}"
        text += f": {train.message}" if train.message else ""
    if train.status == T.AWAITING_APPROVAL:
        text += "; a release manager may !force it"
    lock = blocking_lock(train.repository, train.environment) if train.environment else None
    if lock and not train.override_lock:
        text += "; it goes on when unlocked"
    return text

