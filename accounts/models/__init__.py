"""Models of the accounts app, one module per domain: users, the ledger, API keys, fee tiers."""

from accounts.models.ledger import LedgerAccount, LedgerEntry, LedgerPosting
from accounts.models.users import User

__all__ = ["LedgerAccount", "LedgerEntry", "LedgerPosting", "User"]
