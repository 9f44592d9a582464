from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budgetllm_site.settings")

app = Celery("budgetllm")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
