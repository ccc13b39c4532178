"""The node pool: deploy targets, which branch each serves, and what was deployed where."""

from django.db import models
from django.db.models import Q


class NodeQuerySet(models.QuerySet):
    def branch_pool(self):
        return self.filter(environment=Node.Environment.BRANCH)

    def usable_by(self, repository):
        """The shared nodes and those reserved for `repository` (a Repository or its pk)."""
        return self.filter(Q(repository__isnull=True) | Q(repository=repository))

    def allocatable(self):
        """Enabled, not draining, not known to be unhealthy, and not held by a build."""
        return self.filter(enabled=True, draining=False, held_by__isnull=True).exclude(
            health=Node.Health.UNHEALTHY
        )


class Node(models.Model):
    class Environment(models.TextChoices):
        BRANCH = "branch", "Branch pool"
        STAGING = "staging"
        PREVIEW = "preview"
        PREPROD = "preprod"
        PRODUCTION = "production"

    class Transport(models.TextChoices):
        SSH = "ssh", "SSH"
        LOCAL = "local", "Local"

    class Health(models.TextChoices):
        UNKNOWN = "unknown"
        HEALTHY = "healthy"
        # Reachable, but the deployed app does not answer its health URL. Still allocatable:
        # a deploy restarts the app, and excluding these would leave a rebooted pool empty.
        DEGRADED = "degraded"
        UNHEALTHY = "unhealthy"  # unreachable through its transport: never allocated

    name = models.SlugField(max_length=100, unique=True)
    environment = models.CharField(max_length=20, choices=Environment.choices,
                                   default=Environment.BRANCH)
    # None: in the shared pool, used by every repository. Set: reserved for that
    # repository, whose builds use it before any shared node; no other repository's do.
    repository = models.ForeignKey("pipeline.Repository", null=True, blank=True,
                                   on_delete=models.PROTECT, related_name="nodes",
                                   help_text="Empty: the shared pool. Set: only this "
                                             "repository's builds use the node.")
    transport = models.CharField(max_length=10, choices=Transport.choices, default=Transport.SSH)
    host = models.CharField(max_length=255, default="127.0.0.1",
                            help_text="Where SSH connects and where the app answers.")
    ssh_port = models.PositiveIntegerField(default=22)
    user = models.CharField(max_length=100, blank=True, default="deploy")
    app_port = models.PositiveIntegerField(default=8080, help_text="The port the app listens on.")
    base_path = models.CharField(max_length=500, help_text="releases/, current and shared/ live here.")
    host_key = models.TextField(blank=True, help_text="The pinned SSH host key (type and base64).")
    env = models.JSONField(default=dict, blank=True,
                           help_text='Extra environment for install and start on this node, e.g. '
                                     '{"PATH": "/opt/app/bin:/usr/bin:/bin"}. Never secrets.')
    enabled = models.BooleanField(default=True)
    draining = models.BooleanField(default=False)
    off_cycle = models.BooleanField(default=False)
    health = models.CharField(max_length=10, choices=Health.choices, default=Health.UNKNOWN)
    health_message = models.CharField(max_length=500, blank=True)
    health_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_health_check = models.DateTimeField(null=True, blank=True)
    current_sha = models.CharField(max_length=40, blank=True)
    current_branch = models.CharField(max_length=255, blank=True)
    health_url = models.CharField(max_length=500, blank=True,
                                  help_text="The deployed app's health URL (from its spec).")
    last_changed_at = models.DateTimeField(null=True, blank=True,
                                           help_text="When a deploy last changed it (empty: never).")
    # The build deploying to (or testing on) this node right now. One node, one build.
    held_by = models.OneToOneField("pipeline.Build", null=True, blank=True,
                                   on_delete=models.SET_NULL, related_name="held_node")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = NodeQuerySet.as_manager()

    class Meta:
        ordering = ["environment", "name"]

    def __str__(self):
        return self.name

    @property
    def pool(self):
        """Where the node serves: "shared", or the name of the repository it is reserved for."""
        return self.repository.name if self.repository_id else "shared"

    @property
    def health_shown(self):
        """A disabled node is never checked, so its last health would be stale: say so."""
        return self.health if self.enabled else "disabled"

    @property
    def address(self):
        return f"{self.host}:{self.ssh_port}"

    @property
    def url(self):
        return f"http://{self.host}:{self.app_port}/"

    def event_scope(self):
        lease = getattr(self, "lease", None) if self.pk else None
        return {"node_id": self.pk, "repository_id": lease.repository_id if lease else None}


class NodeLease(models.Model):
    """Which branch a node serves: kept after the build ends, so a rebuild lands on the
    same node (sticky). Removed when the branch is merged, closed or deleted."""

    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="lease")
    repository = models.ForeignKey("pipeline.Repository", on_delete=models.CASCADE,
                                   related_name="node_leases")
    branch = models.CharField(max_length=255)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["repository", "branch"], name="lease_one_node_per_branch"),
        ]

    def __str__(self):
        return f"{self.node} -> {self.repository}:{self.branch}"


class DeploymentQuerySet(models.QuerySet):
    def active(self):
        return self.filter(status__in=Deployment.ACTIVE)


class Deployment(models.Model):
    class Trigger(models.TextChoices):
        BRANCH = "branch"
        TRAIN = "train"
        FORCE = "force"
        ROLLBACK = "rollback"

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        ROLLED_BACK = "rolled_back"

    TRANSITIONS = {
        Status.RUNNING: {Status.SUCCEEDED, Status.FAILED, Status.ROLLED_BACK},
        # A production node put back after another node of the rollout failed.
        Status.SUCCEEDED: {Status.ROLLED_BACK},
    }
    ACTIVE = {Status.RUNNING}

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="deployments")
    build = models.ForeignKey("pipeline.Build", null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="deployments")
    sha = models.CharField(max_length=40)
    branch = models.CharField(max_length=255, blank=True)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.BRANCH)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING)
    previous_sha = models.CharField(max_length=40, blank=True)
    message = models.TextField(blank=True)
    log = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["node"], condition=Q(status="running"),
                                    name="deployment_one_active_per_node"),
            models.CheckConstraint(condition=Q(status__in=["running", "succeeded", "failed",
                                                           "rolled_back"]),
                                   name="deployment_status_valid"),
        ]

    def __str__(self):
        return f"{self.sha[:10]} -> {self.node}"

    def event_scope(self):
        build = self.build
        return {"node_id": self.node_id, "build_id": self.build_id,
                "repository_id": build.repository_id if build else None}
