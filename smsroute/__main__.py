"""``python -m smsroute`` is the ``smsroute`` command."""

from smsroute.cli import main

main()
