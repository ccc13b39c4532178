"""Plain dicts for the API and the pages' live updates."""


def _time(value):
    return value.isoformat() if value else None


def job_to_dict(job):
    return {
        "id": job.pk,
        "name": job.name,
        "stage": job.stage,
        "command": job.command_display,
        "status": job.status,
        "exit_code": job.exit_code,
        "message": job.message,
        "output_bytes": job.output_bytes,
        "output_truncated": job.output_truncated,
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
        "duration": job.duration.total_seconds() if job.duration else None,
    }


def build_to_dict(build, jobs=None):
    return {
        "id": build.pk,
        "repository": build.repository.name,
        "branch": build.branch,
        "sha": build.sha,
        "kind": build.kind,
        "status": build.status,
        "message": build.message,
        "requested_by": build.requested_by.get_username() if build.requested_by_id else None,
        "created_at": _time(build.created_at),
        "started_at": _time(build.started_at),
        "finished_at": _time(build.finished_at),
        "url": build.get_absolute_url(),
        "deploy_url": build.deploy_url,
        "jobs": [job_to_dict(job) for job in (jobs if jobs is not None else build.jobs.all())],
    }


def pull_to_dict(pr):
    build = pr.latest_build
    return {
        "number": pr.number,
        "repository": pr.repository.name,
        "title": pr.title,
        "branch": pr.branch,
        "head_sha": pr.head_sha,
        "state": pr.state,
        "author": pr.author_name,
        "good_to_merge": pr.good_to_merge,
        "latest_build": {"id": build.pk, "sha": build.sha, "status": build.status,
                         "deploy_url": build.deploy_url} if build else None,
        "url": pr.get_absolute_url(),
    }


def repository_to_dict(repository):
    from pipeline.services.git import redact

    return {
        "name": repository.name,
        # Credentials in a clone URL never leave the server.
        "clone_url": redact(repository.clone_url),
        "default_branch": repository.default_branch,
        "spec_path": repository.spec_path,
        "provider": repository.provider,
        "nodes": [node.name for node in repository.nodes.all()],
        "url": repository.get_absolute_url(),
    }


def node_to_dict(node):
    from nodes.services.pool import pinned_fingerprint

    lease = getattr(node, "lease", None)
    return {
        "name": node.name,
        "environment": node.environment,
        "repository": node.repository.name if node.repository_id else None,
        "pool": node.repository.name if node.repository_id else "shared",
        "transport": node.transport,
        "host": node.host,
        "ssh_port": node.ssh_port,
        "user": node.user,
        "app_port": node.app_port,
        "base_path": node.base_path,
        "enabled": node.enabled,
        "draining": node.draining,
        "off_cycle": node.off_cycle,
        "health": node.health,
        "health_message": node.health_message,
        "last_health_check": _time(node.last_health_check),
        "current_sha": node.current_sha,
        "current_branch": node.current_branch,
        "serving": {"repository": lease.repository.name, "branch": lease.branch} if lease else None,
        "held_by_build": node.held_by_id,
        "host_key_fingerprint": pinned_fingerprint(node),
        "url": node.url,
    }


def lock_to_dict(lock):
    def name(user):
        return user.get_username() if user else None

    return {"environment": lock.environment, "reason": lock.reason,
            "locked_by": name(lock.locked_by), "created_at": _time(lock.created_at),
            "expires_at": _time(lock.expires_at), "released_at": _time(lock.released_at),
            "released_by": name(lock.released_by)}
