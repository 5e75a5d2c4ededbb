"""A Django Task (django.tasks / django-tasks) run by vaultq: annotated parameters are the
typed, sealed payload."""

from __future__ import annotations

from django.db.models import Sum

from shop.models import Order
from vaultq.django.compat import task  # django.tasks.task on Django 6


@task()
def order_total(customer: str) -> int:
    total = Order.objects.filter(customer=customer).aggregate(s=Sum("amount_cents"))["s"]
    return int(total or 0)
