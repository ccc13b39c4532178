"""Node pool management. Every change goes through nodes.services.pool."""

from django.contrib import admin, messages
from django.core import signing
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.timesince import timesince

from nodes.models import Deployment, Node, NodeLease
from nodes.services import health, pool
from nodes.transports import TransportError
from pipeline import permissions
from pipeline.models import Repository

FETCH_HOST_KEY = "_fetch_host_key"  # the submit button that saves, then reads the host key
# Actions after which a node may be usable again: check it now, not at the next round.
CHECK_AFTER = {"enable", "undrain"}


class DeploymentInline(admin.TabularInline):
    model = Deployment
    fields = ["started_at", "sha", "branch", "trigger", "status", "build", "message"]
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ["-id"]
    show_change_link = True


def _flag_action(name, label):
    def action(modeladmin, request, queryset):
        changed = pool.set_flag(queryset, name, user=request.user)
        if name in CHECK_AFTER:
            for node in queryset:
                health.check_soon(node)
        modeladmin.message_user(request, f"{label}: {changed} node(s) changed.")

    action.__name__ = name
    action.short_description = label
    action.allowed_permissions = ("change",)
    return action


class PoolFilter(admin.SimpleListFilter):
    title = "pool"
    parameter_name = "pool"

    def lookups(self, request, model_admin):
        reserved = Repository.objects.filter(nodes__isnull=False).distinct().order_by("name")
        return [("shared", "shared"), *((str(repo.pk), repo.name) for repo in reserved)]

    def queryset(self, request, queryset):
        if self.value() == "shared":
            return queryset.filter(repository__isnull=True)
        if self.value():
            return queryset.filter(repository=self.value())
        return queryset


def _fingerprint(key_line):
    from nodes.transports.ssh import parse_host_key  # paramiko only where SSH is used

    try:
        return parse_host_key(key_line).fingerprint
    except TransportError as exc:
        return f"unreadable: {exc}"


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "environment", "pool", "transport", "address_display", "enabled",
                    "draining", "off_cycle", "health_display", "serving", "current_sha_short", "age"]
    list_filter = ["environment", PoolFilter, "transport", "health", "enabled", "draining",
                   "off_cycle"]
    search_fields = ["name", "host", "current_branch", "current_sha"]
    readonly_fields = ["health", "health_message", "health_latency_ms", "last_health_check",
                       "current_sha", "current_branch", "health_url", "last_changed_at",
                       "held_by", "host_key_display", "created_at"]
    exclude = ["host_key"]
    inlines = [DeploymentInline]
    actions = [_flag_action(name, label) for name, label in [
        ("enable", "Enable"), ("disable", "Disable"), ("drain", "Drain"),
        ("undrain", "Undrain"), ("mark_off_cycle", "Mark off-cycle"),
        ("clear_off_cycle", "Clear off-cycle")]]

    @admin.display(description="address")
    def address_display(self, node):
        return node.address if node.transport == Node.Transport.SSH else f"local:{node.app_port}"

    @admin.display(description="pool", ordering="repository__name")
    def pool(self, node):
        return node.pool

    @admin.display(description="health", ordering="health")
    def health_display(self, node):
        if not node.enabled:
            last = (f"; last check: {node.health}, {timesince(node.last_health_check)} ago"
                    if node.last_health_check else "")
            return format_html('<span title="not checked while disabled{}">disabled</span>', last)
        return format_html('<span title="{}">{}</span>', node.health_message, node.health)

    @admin.display(description="serving")
    def serving(self, node):
        lease = getattr(node, "lease", None)
        return f"{lease.repository.name}:{lease.branch}" if lease else "—"

    @admin.display(description="SHA")
    def current_sha_short(self, node):
        return node.current_sha[:10]

    @admin.display(description="age", ordering="last_changed_at")
    def age(self, node):
        return timesince(node.last_changed_at) if node.last_changed_at else "never used"

    @admin.display(description="pinned host key")
    def host_key_display(self, node):
        hint = "“Save and fetch host key…” below reads the key the node offers now."
        if not node.host_key:
            return format_html("none pinned: SSH connections are refused<br>{}", hint)
        return format_html("<code>{}</code><br>fingerprint <code>{}</code><br>{}",
                           node.host_key, _fingerprint(node.host_key), hint)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("lease__repository", "repository")

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change or form.changed_data:
            health.check_soon(obj)  # where it connects may have changed: know now

    def response_add(self, request, obj, post_url_continue=None):
        if FETCH_HOST_KEY in request.POST:
            return redirect("admin:nodes_node_host_key", obj.pk)
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        if FETCH_HOST_KEY in request.POST:
            return redirect("admin:nodes_node_host_key", obj.pk)
        return super().response_change(request, obj)

    def get_urls(self):
        extra = [path("<int:node_id>/host-key/", self.admin_site.admin_view(self.host_key_view),
                      name="nodes_node_host_key")]
        return extra + super().get_urls()

    def host_key_view(self, request, node_id):
        """Show the key the node offers; pin it only when a person confirms."""
        permissions.require(request.user, "change_node")
        node = get_object_or_404(Node, pk=node_id)
        change_url = reverse("admin:nodes_node_change", args=[node.pk])
        if request.method == "POST":
            try:
                pool.pin_host_key(node, request.POST.get("token", ""), user=request.user)
            except signing.BadSignature:
                self.message_user(request, "That confirmation expired or was altered: fetch again.",
                                  messages.ERROR)
                return redirect(request.path)
            self.message_user(request, f"Host key pinned for {node.name}; checking it now.")
            return redirect(change_url)
        context = {**self.admin_site.each_context(request), "node": node, "opts": self.model._meta,
                   "title": f"Host key of {node.name}", "change_url": change_url,
                   "pinned_fingerprint": _fingerprint(node.host_key) if node.host_key else ""}
        try:
            context["key_line"], context["fingerprint"], context["token"] = pool.offer_host_key(node)
        except TransportError as exc:
            context["error"] = str(exc)
        return render(request, "admin/nodes/host_key.html", context)


@admin.register(NodeLease)
class NodeLeaseAdmin(admin.ModelAdmin):
    list_display = ["node", "repository", "branch", "updated_at"]
    list_filter = ["repository"]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["id", "node", "sha", "branch", "trigger", "status", "started_at", "finished_at"]
    list_filter = ["status", "trigger", "node"]
    search_fields = ["sha", "branch"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False
