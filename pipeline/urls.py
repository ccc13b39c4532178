from django.contrib import admin
from django.contrib.auth import views as auth_views
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
    path("repos/<slug:name>/pulls/<int:number>/lgtm", views.lgtm_pull_request,
         name="lgtm_pull_request"),
    path("repos/<slug:name>/pulls/<int:number>/merge", views.merge_pull_request,
         name="merge_pull_request"),
    path("repos/<slug:name>/trains/", views.train_list, name="trains"),
    path("repos/<slug:name>/trains/start", views.start_train, name="start_train"),
    path("repos/<slug:name>/trains/<int:train_id>/", views.train, name="train"),
    path("repos/<slug:name>/trains/<int:train_id>/approve", views.approve_train,
         name="approve_train"),
    path("repos/<slug:name>/trains/<int:train_id>/veto", views.veto_train, name="veto_train"),
    path("repos/<slug:name>/trains/<int:train_id>/force", views.force_train, name="force_train"),
    path("repos/<slug:name>/rollback", views.rollback, name="rollback"),
    path("repos/<slug:name>/locks", views.lock, name="lock"),
    path("repos/<slug:name>/unlock", views.unlock, name="unlock"),
    path("inbox/", views.inbox, name="inbox"),
    # API names are <str:…>, not <slug:…>: a name that is no slug still gets a JSON answer
    # naming what exists, not Django's HTML 404.
    path("api/repos", api.repository_collection, name="api_repos"),
    path("api/repos/<str:name>", api.repository_detail, name="api_repo"),
    path("api/repos/<str:repository>/pulls", api.pull_collection, name="api_pulls"),
    path("api/repos/<str:repository>/pulls/<int:number>/close", api.pull_close,
         name="api_pull_close"),
    path("api/repos/<str:repository>/pulls/<int:number>/lgtm", api.pull_lgtm,
         name="api_pull_lgtm"),
    path("api/repos/<str:repository>/pulls/<int:number>/merge", api.pull_merge,
         name="api_pull_merge"),
    path("api/repos/<str:repository>/builds", api.build_collection, name="api_builds"),
    path("api/repos/<str:repository>/commands", api.command, name="api_command"),
    path("api/repos/<str:repository>/trains", api.train_collection, name="api_trains"),
    path("api/repos/<str:repository>/trains/current", api.train_current,
         name="api_train_current"),
    path("api/repos/<str:repository>/rollback", api.rollback, name="api_rollback"),
    path("api/repos/<str:repository>/locks", api.lock_collection, name="api_locks"),
    path("api/repos/<str:repository>/locks/unlock", api.unlock, name="api_unlock"),
    path("api/trains/<int:train_id>", api.train_detail, name="api_train"),
    path("api/trains/<int:train_id>/<str:action>", api.train_action, name="api_train_action"),
    path("api/builds/<int:build_id>", api.build_detail, name="api_build"),
    path("api/jobs/<int:job_id>/log", api.job_log, name="api_job_log"),
    path("api/nodes", api.node_collection, name="api_nodes"),
    path("api/nodes/<str:name>", api.node_detail, name="api_node"),
    path("api/nodes/<str:name>/host-key", api.node_host_key, name="api_node_host_key"),
    path("api/nodes/<str:name>/<str:action>", api.node_action, name="api_node_action"),
    path("api/<path:rest>", api.not_found),
]

urlpatterns = [
    # Team members log in here (the admin's login is for staff only).
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True),
         name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("radiators/", include("radiators.urls")),
    path("", include((pipeline_patterns, "pipeline"))),
]
