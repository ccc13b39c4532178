from django.contrib import admin
from django.urls import include, path

from pipeline import api, views

app_name = "pipeline"

pipeline_patterns = [
    path("", views.home, name="home"),
    path("repos/<slug:name>/", views.repository, name="repository"),
    path("repos/<slug:name>/build", views.request_build, name="request_build"),
    path("builds/<int:build_id>/", views.build, name="build"),
    path("builds/<int:build_id>/jobs/<int:job_id>/tests/", views.job_tests, name="job_tests"),
    path("repos/<slug:name>/pulls/open", views.open_pull_request, name="open_pull_request"),
    path("repos/<slug:name>/pulls/<int:number>/", views.pull_request, name="pull_request"),
    path("repos/<slug:name>/pulls/<int:number>/close", views.close_pull_request,
         name="close_pull_request"),
    path("api/repos/<slug:repository>/pulls", api.pull_collection, name="api_pulls"),
    path("api/repos/<slug:repository>/pulls/<int:number>/close", api.pull_close,
         name="api_pull_close"),
    path("api/repos/<slug:repository>/builds", api.build_collection, name="api_builds"),
    path("api/repos/<slug:repository>/commands", api.command, name="api_command"),
    path("api/builds/<int:build_id>", api.build_detail, name="api_build"),
    path("api/jobs/<int:job_id>/log", api.job_log, name="api_job_log"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("radiators/", include("radiators.urls")),
    path("", include((pipeline_patterns, "pipeline"))),
]
