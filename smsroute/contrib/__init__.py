"""Thin integrations of :class:`~smsroute.sync.SyncRouter` with web frameworks.

:mod:`smsroute.contrib.django` (a view and a URLconf to include) and
:mod:`smsroute.contrib.flask` (a blueprint), each a few lines over
:mod:`smsroute.wsgi`.  Neither framework is a dependency of smsroute: import the
module of the one you use.
"""
