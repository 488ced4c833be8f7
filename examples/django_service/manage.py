"""A Django service that sends SMS and takes the receipts, without asyncio.

    SMSROUTE_CONFIG=config/routing.yaml python examples/django_service/manage.py runserver 8080

Set ``defaults.webhook_url`` to ``http://<host>:8080/sms``.
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "smsservice.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
