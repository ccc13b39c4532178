"""Kiosk tokens in the admin: issuing one shows its key (and kiosk link) once; revoking
closes the screens that use it. Tokens are revoked, never edited or deleted: the list
keeps who issued which screen's pass and when it was last used."""

from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from .kiosk import issue, revoke, wall_path
from .models import KioskToken


@admin.register(KioskToken)
class KioskTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "wall", "prefix", "created_by", "created_at", "last_used_at",
                    "revoked_at"]
    list_filter = ["repository", ("revoked_at", admin.EmptyFieldListFilter)]
    actions = ["revoke_selected"]

    @admin.display(description="wall")
    def wall(self, obj):
        return obj.repository.name if obj.repository_id else "all repositories"

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["repository", "name"]
        return ["repository", "name", "prefix", "created_by", "created_at", "last_used_at",
                "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.get_fields(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: it also closes the screens

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        if not self.has_change_permission(request):
            actions.pop("revoke_selected", None)
        return actions

    def save_model(self, request, obj, form, change):
        if change:
            return  # nothing of a token is editable
        token, raw = issue(obj.repository, obj.name, created_by=request.user)
        obj.pk, obj.raw_key = token.pk, raw  # raw_key: this object only, never saved
        obj.refresh_from_db()

    def response_add(self, request, obj, post_url_continue=None):
        context = {**self.admin_site.each_context(request), "opts": self.model._meta,
                   "token": obj, "key": obj.raw_key,
                   "kiosk_url": request.build_absolute_uri(wall_path(obj.raw_key)),
                   "title": f"Kiosk token {obj.name}",
                   "changelist_url": reverse("admin:radiators_kiosktoken_changelist")}
        response = TemplateResponse(request, "admin/radiators/kiosktoken/created.html", context)
        add_never_cache_headers(response)  # the key must not stay in any cache
        return response

    @admin.action(description="Revoke the selected kiosk tokens (their screens close)",
                  permissions=["change"])
    def revoke_selected(self, request, queryset):
        revoked = sum(revoke(token) for token in queryset)
        self.message_user(request, f"{revoked} kiosk token(s) revoked.", messages.SUCCESS)
