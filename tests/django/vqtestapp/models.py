from __future__ import annotations

from django.db import models


class Note(models.Model):
    key = models.CharField(max_length=100)
    batch = models.CharField(max_length=100, default="", db_index=True)
    value = models.IntegerField(default=0)

    class Meta:
        permissions = [("run_report", "Can run the report job")]


class SignalLog(models.Model):
    result_id = models.CharField(max_length=100, db_index=True)
    name = models.CharField(max_length=20)
    status = models.CharField(max_length=20)
    pid = models.IntegerField()
