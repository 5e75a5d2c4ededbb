"""Policies named in settings (VAULTQ["DEFAULT_POLICY"], TASKS OPTIONS)."""

from vaultq import require_authenticated, require_permission, require_role
from vaultq.django.policies import require_django_permission

AUTHENTICATED = require_authenticated()
# Checked again against the database before each attempt: revoking the permission
# stops jobs already queued.
CAN_EXPORT = require_django_permission("shop.export_orders")
# A snapshot check: the permission sealed into the job at enqueue.
CAN_VIEW_ORDERS = require_permission("shop.view_order")
# Who may read a result that is not their own (job pages, get_result): staff only.
# Everyone else reads only the results of jobs enqueued as themselves.
READ_ANY_RESULT = require_role("staff")
