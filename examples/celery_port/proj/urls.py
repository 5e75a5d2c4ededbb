"""No views: the example is driven from the shell and the worker (as Celery's is)."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
