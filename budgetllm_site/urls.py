from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic.base import RedirectView
from django.views.static import serve

from proxy import ops

urlpatterns = [
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("metrics", ops.metrics, name="metrics"),
    path("staff/metrics/", ops.staff_metrics, name="staff_metrics"),
    path("", include("marketing.urls")),
    path("", include("accounts.urls")),
    path("keys/", include("keys.urls")),
    path("", include("budgets.urls")),
    path("billing/", include("billing.urls")),
    path("v1/", include("proxy.urls")),
    path("admin/", admin.site.urls),
]

if settings.SERVE_STATIC:
    # Self-hosters without a reverse proxy in front still get CSS and JS; behind one,
    # set SERVE_STATIC=false and let it serve STATIC_ROOT.
    from django.contrib.staticfiles.views import serve as finder_serve

    if settings.DEBUG:
        urlpatterns += [re_path(r"^static/(?P<path>.*)$", finder_serve, {"insecure": True})]
    else:
        urlpatterns += [
            re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT})
        ]
