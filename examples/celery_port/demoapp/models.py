from django.db import models


class Widget(models.Model):
    name = models.CharField(max_length=140)


class WidgetCount(models.Model):
    """Written by the periodic ``count_widgets`` job."""

    count = models.IntegerField()
    at = models.DateTimeField(auto_now_add=True)
