"""Admin commands as words, parsed once: Telegram's /setquota, /grant, /ban, /unban, /budget and the
CLI's `imagine quota set|grant|show`, `imagine ban|unban`, `imagine budget` take the same arguments and
give the same answers.

A front finds the user the command is about (an id, or the author of a replied-to message) and the
caller; :func:`run_admin` reads the rest and calls the accounts, which check that the caller is an
admin. A malformed argument raises :class:`InvalidRequest` with the front's usage sentence.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.accounts import Accounts
from gateway.errors import InvalidRequest
from gateway.request import whole_number

#: The commands and how many arguments follow the user (None: any number, the ban reason).
ARGUMENTS: dict[str, int | None] = {"setquota": 1, "grant": 1, "ban": None, "unban": 0, "show": 0}
DEFAULT_WORDS = ("default", "reset")


def admin_number(raw: str, usage: str) -> int:
    """A whole number argument; past 20 digits it stands as a number out of range, which the service
    refuses with its range sentence."""
    value = whole_number(raw)
    if value is None:
        raise InvalidRequest(usage)
    return value


async def run_admin(
    accounts: Accounts, actor: str | None, command: str, user: str, args: Sequence[str], *, usage: str
) -> str:
    """Run ``command`` about ``user`` for ``actor`` (None: the operator at the CLI); its answer."""
    wanted = ARGUMENTS[command]
    if wanted is not None and len(args) != wanted:
        raise InvalidRequest(usage)
    if command == "setquota":
        allowance = None if args[0].lower() in DEFAULT_WORDS else admin_number(args[0], usage)
        return await accounts.set_allowance(actor, user, allowance)
    if command == "grant":
        return await accounts.grant(actor, user, admin_number(args[0], usage))
    if command == "ban":
        return await accounts.ban(actor, user, " ".join(args))
    if command == "unban":
        return await accounts.unban(actor, user)
    return accounts.quota_text(await accounts.quota(user))  # "show": anyone may read a quota


async def run_budget(accounts: Accounts, actor: str | None, args: Sequence[str], *, usage: str) -> str:
    """``budget`` shows this month's GPU budget; ``budget AMOUNT`` sets this month's ceiling, and
    ``budget default`` goes back to IMAGINE_MONTHLY_BUDGET."""
    if not args:
        return await accounts.show_budget(actor)
    if len(args) != 1:
        raise InvalidRequest(usage)
    if args[0].lower() in DEFAULT_WORDS:
        return await accounts.set_budget(actor, None)
    try:
        amount = float(args[0])
    except ValueError:
        raise InvalidRequest(usage) from None
    if amount != amount:  # NaN
        raise InvalidRequest(usage)
    return await accounts.set_budget(actor, amount)
