# The dashboard's permissions live on an unmanaged model: this migration creates no
# table; `migrate` creates the content type and the three permissions.
from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Dashboard",
            fields=[
                (
                    "id",
                    models.AutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
            ],
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": [
                    ("view_dashboard", "Can view the vaultq dashboard"),
                    ("operate_dashboard", "Can retry and purge vaultq dead letters"),
                    ("decrypt_job", "Can open a vaultq job's result value in the dashboard"),
                ],
            },
        ),
    ]
