"""Models of the accounts app, one module per domain: users, the ledger, API keys, fee tiers."""

from accounts.models.api_keys import APIKey, ApiKeyPermission
from accounts.models.fee_tiers import (
    DailyVolume,
    FeeTier,
    FeeTierAssignment,
    QuotePresence,
    QuotePresenceSample,
)
from accounts.models.ledger import LedgerAccount, LedgerEntry, LedgerPosting
from accounts.models.users import User

__all__ = [
    "APIKey",
    "ApiKeyPermission",
    "DailyVolume",
    "FeeTier",
    "FeeTierAssignment",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerPosting",
    "QuotePresence",
    "QuotePresenceSample",
    "User",
]
