"""ASGI entry point: `uvicorn budgetllm_site.asgi:application`."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budgetllm_site.settings")

application = get_asgi_application()
