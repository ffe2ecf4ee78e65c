"""The audit event catalogue: every kind of event the trail records, by stable name."""

from django.db import models


class AuditEvent(models.TextChoices):
    """Event types. Values are stored and exported; never rename one, only add new ones."""

    # Orders (payload: every field of the order as submitted; for changes, before and after).
    ORDER_SUBMITTED = "order.submitted", "Order submitted"
    # Refused at entry (400/404/409 before anything was stored): what was sent and the error.
    ORDER_REFUSED = "order.refused", "Order refused at entry"
    ORDER_ACCEPTED = "order.accepted", "Order accepted by the matching engine"
    ORDER_AMENDED = "order.amended", "Order amended"
    # Self-trade prevention's decrement_both took quantity off an order that stays open.
    ORDER_REDUCED = "order.reduced", "Order reduced by self-trade prevention"
    ORDER_CANCELLED = "order.cancelled", "Order cancelled"  # who and why
    ORDER_REJECTED = "order.rejected", "Order rejected"  # reason
    ORDER_EXPIRED = "order.expired", "Order expired"
    ORDER_TRIGGERED = "order.triggered", "Stop order triggered"
    # A DAY order's expiry moved: its instrument's session hours changed (payload: the new one).
    ORDER_EXPIRY_CHANGED = "order.expiry_changed", "Order expiry changed"
    # What a user or staff member asked for (the engine's outcome is recorded separately).
    ORDER_CANCEL_REQUESTED = "order.cancel_requested", "Order cancel requested"
    ORDER_AMEND_REQUESTED = "order.amend_requested", "Order amend requested"
    # A cancel or amend the engine refused (the order had ended, a post-only price would
    # cross, ...): the order itself is not rejected.
    ORDER_CANCEL_REFUSED = "order.cancel_refused", "Order cancel refused"
    ORDER_AMEND_REFUSED = "order.amend_refused", "Order amend refused"
    # Trades (both orders, both users, maker side, price, quantity, both fees).
    TRADE_EXECUTED = "trade.executed", "Trade executed"
    SELF_TRADE_PREVENTED = "trade.self_trade_prevented", "Self-trade prevented"
    # At order entry, beside order.submitted: the rates frozen on the order (maker, taker) and
    # the fee tier, 30-day volume and uptime they were chosen from. Each fill's fees are in its
    # trade.executed.
    FEE_CALCULATED = "fee.calculated", "Fee calculated"
    FEE_TIER_CHANGED = "fee.tier_changed", "Fee tier changed"  # from, to, volume, uptime
    # Money movements.
    DEPOSIT = "funds.deposit", "Deposit"
    WITHDRAWAL = "funds.withdrawal", "Withdrawal"
    # Authentication and credentials.
    LOGIN = "auth.login", "Login"
    LOGIN_FAILED = "auth.login_failed", "Failed login"
    LOGOUT = "auth.logout", "Logout"
    TWO_FACTOR_ENABLED = "auth.2fa_enabled", "2FA enabled"
    TWO_FACTOR_DISABLED = "auth.2fa_disabled", "2FA disabled"
    TWO_FACTOR_VERIFIED = "auth.2fa_verified", "2FA verified"
    TWO_FACTOR_FAILED = "auth.2fa_failed", "2FA failed"
    API_KEY_CREATED = "auth.api_key_created", "API key created"
    API_KEY_REVOKED = "auth.api_key_revoked", "API key revoked"
    USER_SIGNED_UP = "auth.signup", "User signed up"
    LOGIN_THROTTLED = "auth.login_throttled", "Login throttled"
    RECOVERY_CODES_GENERATED = "auth.recovery_codes_generated", "2FA recovery codes generated"
    # A user's own change on the web (staff's in the admin are staff actions); refused: the
    # current password or code was wrong (`wrong` in the payload).
    PASSWORD_CHANGED = "auth.password_changed", "Password changed"
    PASSWORD_CHANGE_REFUSED = "auth.password_change_refused", "Password change refused"
    # Staff.
    STAFF_ACTION = "staff.action", "Staff action in the admin"
    # Matching workers.
    WORKER_STARTED = "worker.started", "Worker started"
    WORKER_STOPPED = "worker.stopped", "Worker stopped"
    SHARD_TAKEOVER = "worker.shard_takeover", "Shard takeover"
    HOLDER_FENCED = "worker.holder_fenced", "Hung shard holder fenced"
    WORKER_RECOVERY = "worker.recovery", "Worker recovery"
    # A session of the deployment ended by the watchdog: stopped mid-statement (its client
    # silent inside a transaction past DB_IDLE_IN_TRANSACTION_TIMEOUT_MS), its locks held.
    STALLED_SESSION_ENDED = "database.stalled_session_ended", "Stalled database session ended"
    # Instruments.
    INSTRUMENT_LISTED = "instrument.listed", "Instrument listed"
    INSTRUMENT_HALTED = "instrument.halted", "Instrument halted"
    INSTRUMENT_RESUMED = "instrument.resumed", "Instrument resumed"
    INSTRUMENT_HALT_REQUESTED = "instrument.halt_requested", "Instrument halt requested"
    INSTRUMENT_RESUME_REQUESTED = "instrument.resume_requested", "Instrument resume requested"
    INSTRUMENT_DELIST_REQUESTED = "instrument.delist_requested", "Instrument delisting requested"
    INSTRUMENT_RULES_CHANGE_REQUESTED = (
        "instrument.rules_change_requested",
        "Instrument rules change requested",
    )
    INSTRUMENT_RULES_CHANGED = "instrument.rules_changed", "Instrument rules changed"
    # API keys: a signed request or WebSocket login refused (reason in the payload), and a
    # correctly signed request refused (key permissions, IP allow-list, web-session-only).
    API_KEY_AUTH_FAILED = "auth.api_key_failed", "API key authentication failed"
    API_KEY_ACCESS_DENIED = "auth.api_key_denied", "API key access denied"


class AuditChannel(models.TextChoices):
    """Where the action came from."""

    WEB = "web", "Web"
    REST = "rest", "REST API"
    WS = "ws", "WebSocket"
    FIX = "fix", "FIX"
    ADMIN = "admin", "Admin"
    SYSTEM = "system", "System"
