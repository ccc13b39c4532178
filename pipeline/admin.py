from django import forms
from django.contrib import admin

from pipeline.models import ApiToken, Build, Commit, Event, Job, PullRequest, Repository, Variable


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
    list_display = ["name", "provider", "default_branch", "clone_url", "lgtms_required"]
    search_fields = ["name"]
    inlines = [VariableInline]


@admin.register(Commit)
class CommitAdmin(admin.ModelAdmin):
    list_display = ["sha", "repository", "author_name", "committed_at", "is_revert"]
    list_filter = ["repository", "is_revert"]
    search_fields = ["sha", "author_name", "author_email", "message"]


@admin.register(PullRequest)
class PullRequestAdmin(admin.ModelAdmin):
    list_display = ["__str__", "title", "branch", "state", "author_name", "updated_at"]
    list_filter = ["repository", "state"]
    search_fields = ["title", "branch"]


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
    list_display = ["name", "user", "prefix", "created_at", "last_used_at"]
    readonly_fields = ["key_hash", "prefix", "created_at", "last_used_at"]
