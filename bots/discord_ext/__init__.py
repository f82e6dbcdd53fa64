"""The Discord bot's features as discord.py extensions, loaded in the order of ``EXTENSIONS``.

Each cog parses an interaction into the gateway's terms, calls :class:`gateway.ImagineService`
and renders its answer; none holds quota rules, SQL or backend calls.
"""

EXTENSIONS = (
    "bots.discord_ext.images",
    "bots.discord_ext.account",
    "bots.discord_ext.admin",
)
