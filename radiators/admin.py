"""Wall layouts are kept on the server and edited here: which panels, in which order,
and whether a change of state makes a sound. Kiosk tokens: kiosk_admin."""

from django import forms
from django.contrib import admin

from radiators import kiosk_admin  # noqa: F401  (registers the kiosk tokens' admin)
from radiators.events import wall_changed
from radiators.models import WallLayout
from radiators.snapshot import PANELS


class WallLayoutForm(forms.ModelForm):
    panels = forms.JSONField(required=False, initial=list,
                             help_text=f"Panel names in order, e.g. {PANELS}; empty: all.")

    class Meta:
        model = WallLayout
        fields = ["repository", "panels", "sound"]

    def clean_panels(self):
        panels = self.cleaned_data.get("panels") or []
        if not isinstance(panels, list) or any(name not in PANELS for name in panels):
            raise forms.ValidationError(f"a list of panel names among {', '.join(PANELS)}")
        if len(set(panels)) != len(panels):
            raise forms.ValidationError("each panel at most once")
        return panels


@admin.register(WallLayout)
class WallLayoutAdmin(admin.ModelAdmin):
    form = WallLayoutForm
    list_display = ["__str__", "panel_order", "sound", "updated_at"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # A layout records no Event: tell its open screens (after the save commits).
        from django.db import transaction

        name = obj.repository.name if obj.repository_id else None
        transaction.on_commit(lambda: wall_changed(name))

    @admin.display(description="panels")
    def panel_order(self, layout):
        return " → ".join(layout.panels) or "all"
