# Celery's example imports its app here (`from .celery import app as celery_app`) so that
# @shared_task binds to it. vaultq.django builds its App when Django is ready: nothing here.
