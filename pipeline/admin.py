from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from pipeline.models import (
    ApiToken,
    Approval,
    Build,
    Commit,
    DeployTrain,
    Event,
    FreezeWindow,
    Job,
    Lgtm,
    Lock,
    Notification,
    PullRequest,
    ReleaseCandidate,
    Repository,
    TrainCommit,
    Variable,
)
from pipeline.services.git import redact


class VariableForm(forms.ModelForm):
    """A secret value is write-only: the page never shows it again; blank keeps it."""

    class Meta:
        model = Variable
        fields = ["name", "value", "secret"]
        widgets = {"value": forms.TextInput(attrs={"size": 40})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk and self.instance.secret:
            self.fields["value"] = forms.CharField(
                required=False, widget=forms.PasswordInput(render_value=False),
                help_text="Secret: not shown. Leave blank to keep the current value.")

    def clean_value(self):
        value = self.cleaned_data.get("value", "")
        if not value and self.instance.pk and self.instance.secret:
            return self.instance.value
        return value


class VariableInline(admin.TabularInline):
    model = Variable
    form = VariableForm
    extra = 1
    verbose_name = "build variable"
    verbose_name_plural = ("build variables (in every job's environment; secret values are "
                           "masked in logs and never shown again)")


@admin.register(Repository)
class RepositoryAdmin(admin.ModelAdmin):
    list_display = ["name", "provider", "default_branch", "clone_url_shown", "lgtms_required",
                    "dismiss_stale_lgtms"]
    search_fields = ["name"]
    inlines = [VariableInline]

    @admin.display(description="clone URL")
    def clone_url_shown(self, repository):
        # Lists are read over shoulders and in screenshots; the form still has the real URL.
        return redact(repository.clone_url)


@admin.register(Commit)
class CommitAdmin(admin.ModelAdmin):
    list_display = ["sha", "repository", "author_name", "committed_at", "is_revert"]
    list_filter = ["repository", "is_revert"]
    search_fields = ["sha", "author_name", "author_email", "message"]


class LgtmInline(admin.TabularInline):
    model = Lgtm
    fields = ["user", "sha", "created_at"]
    readonly_fields = ["created_at"]
    extra = 0


@admin.register(PullRequest)
class PullRequestAdmin(admin.ModelAdmin):
    list_display = ["__str__", "title", "branch", "state", "author_name", "updated_at"]
    list_filter = ["repository", "state"]
    search_fields = ["title", "branch"]
    inlines = [LgtmInline]


@admin.register(ReleaseCandidate)
class ReleaseCandidateAdmin(admin.ModelAdmin):
    # Written only where a master build ends green: read-only here.
    list_display = ["__str__", "repository", "sha", "build", "created_at"]
    list_filter = ["repository"]
    search_fields = ["sha"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class JobInline(admin.TabularInline):
    model = Job
    fields = ["name", "status", "exit_code", "message", "started_at", "finished_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


class ReadOnlyStatusMixin:
    """Statuses change only through the state machine, never by hand in the admin."""

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(Build)
class BuildAdmin(ReadOnlyStatusMixin, admin.ModelAdmin):
    list_display = ["id", "repository", "branch", "sha", "kind", "status", "requested_by",
                    "created_at"]
    list_filter = ["repository", "kind", "status"]
    search_fields = ["branch", "sha"]
    inlines = [JobInline]


@admin.register(Job)
class JobAdmin(ReadOnlyStatusMixin, admin.ModelAdmin):
    list_display = ["id", "build", "name", "status", "exit_code", "started_at", "finished_at"]
    list_filter = ["status", "name"]


@admin.register(Event)
class EventAdmin(ReadOnlyStatusMixin, admin.ModelAdmin):
    list_display = ["created_at", "kind", "repository", "build", "job", "old", "new", "actor",
                    "message"]
    list_filter = ["kind", "repository"]

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Adding a token generates its key, stores only the key's hash and shows the key once,
    on the page that answers the add. Nobody can see it again, the admin included."""

    list_display = ["name", "user", "prefix", "created_at", "last_used_at"]
    list_filter = ["user"]

    def get_fields(self, request, obj=None):
        return ["user", "name"] if obj is None else ["user", "name", "prefix", "created_at",
                                                     "last_used_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["user", "prefix", "created_at", "last_used_at"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.raw_key = obj.set_new_key()  # an attribute of this object only, never saved
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "token": obj, "key": obj.raw_key, "title": f"API token {obj.name}",
                   "changelist_url": reverse("admin:pipeline_apitoken_changelist")}
        response = TemplateResponse(request, "admin/pipeline/apitoken/created.html", context)
        add_never_cache_headers(response)  # the key must not stay in any cache
        return response


# Deploy trains ---------------------------------------------------------------------------
# Trains, answers and locks change through the train's doors (which record events and move
# waiting trains on): the admin shows them. Freeze windows are set up here.

class TrainCommitInline(admin.TabularInline):
    model = TrainCommit
    fields = ["position", "commit", "author", "pull_request", "is_merge", "reverts"]
    readonly_fields = fields
    extra = 0
    can_delete = False


class ApprovalInline(admin.TabularInline):
    model = Approval
    fields = ["user", "verdict", "reason", "via", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(DeployTrain)
class DeployTrainAdmin(ReadOnlyStatusMixin, admin.ModelAdmin):
    list_display = ["id", "repository", "kind", "head_sha", "status", "environment", "message",
                    "created_at"]
    list_filter = ["repository", "kind", "status"]
    search_fields = ["head_sha"]
    inlines = [TrainCommitInline, ApprovalInline]

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Lock)
class LockAdmin(ReadOnlyStatusMixin, admin.ModelAdmin):
    list_display = ["repository", "environment", "reason", "locked_by", "created_at",
                    "expires_at", "released_at", "released_by"]
    list_filter = ["repository", "environment"]

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(FreezeWindow)
class FreezeWindowAdmin(admin.ModelAdmin):
    list_display = ["name", "repository", "start_weekday", "start_time", "end_weekday", "end_time",
                    "enabled"]
    list_filter = ["repository", "enabled"]


@admin.register(Notification)
class NotificationAdmin(ReadOnlyStatusMixin, admin.ModelAdmin):
    list_display = ["created_at", "user", "train", "kind", "message", "read_at"]
    list_filter = ["kind"]
