"""The Telegram bot's parts, wired together by :func:`bots.telegram_ext.front.build_application`.

``context`` holds what every handler is given, ``handlers`` and ``admin`` the commands, ``progress``
the status message, ``delivery`` the photos and the settle/refund contract, ``notices`` the restart
notices, ``ratelimit`` Telegram's limits, and ``front`` the application's lifecycle. None holds quota
rules, SQL or backend calls.
"""
