"""The vaultq web dashboard: queues, workers, jobs, dead letters and schedules in the
browser, without ever showing a payload or a result (docs/dashboard.md).

- :mod:`vaultq.dashboard.data`: what the pages show, read at a bounded cost per request;
- :mod:`vaultq.dashboard.pages` / :mod:`vaultq.dashboard.html`: HTML where every string
  from the broker is escaped by construction;
- :mod:`vaultq.dashboard.views`: one request, shared by both servers;
- :mod:`vaultq.dashboard.server`: the standalone server (``vaultq dashboard MODULE``,
  extra ``vaultq[dashboard]``); ``vaultq.django.dashboard``: the Django mount.
"""

__all__: list[str] = []
