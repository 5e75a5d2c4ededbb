from __future__ import annotations

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=100)
    amount_cents = models.IntegerField()

    class Meta:
        permissions = [("export_orders", "Can export orders")]


class Export(models.Model):
    requested_by = models.CharField(max_length=100)
    rows = models.IntegerField(default=0)
    created = models.DateTimeField(auto_now_add=True)
