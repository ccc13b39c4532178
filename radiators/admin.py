"""Wall layouts are kept on the server and edited here: which panels, in which order,
and whether a change of state makes a sound. (Kiosk tokens have their own admin.)"""

from django import forms
from django.contrib import admin

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

    @admin.display(description="panels")
    def panel_order(self, layout):
        return " → ".join(layout.panels) or "all"
