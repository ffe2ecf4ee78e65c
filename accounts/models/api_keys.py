"""API keys: the programmatic credential (HMAC-signed requests, see accounts/api_keys.py)."""

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q


class ApiKeyPermission(models.TextChoices):
    """What a key may do; a key has one or more (new keys get `read` only unless asked)."""

    READ = "read", "Read"
    TRADE = "trade", "Trade"
    WITHDRAW = "withdraw", "Withdraw"


class APIKey(models.Model):
    """A user's API key: a public id, a secret kept encrypted (HMAC needs it on the server),
    its permissions and optional IP allow-list. Revoked keys stay for the audit trail."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_keys"
    )
    label = models.CharField(max_length=100)
    # The public key id, sent in X-API-KEY on every request.
    key = models.CharField(max_length=64, unique=True)
    # Fernet token of the secret (accounts/api_keys.py: secret_encrypt / secret_decrypt).
    secret_encrypted = models.TextField()
    can_read = models.BooleanField(default=True)
    can_trade = models.BooleanField(default=False)
    can_withdraw = models.BooleanField(default=False)
    # Networks in CIDR form ("203.0.113.7/32", "2001:db8::/48"); empty means any address.
    ip_allowlist = ArrayField(models.CharField(max_length=49), default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Refreshed at most once per API_KEY_LAST_USED_INTERVAL_SECONDS, not on every request.
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        indexes = [models.Index(fields=["user", "-created_at"], name="apikey_user_created")]
        constraints = [
            models.CheckConstraint(
                condition=Q(can_read=True) | Q(can_trade=True) | Q(can_withdraw=True),
                name="apikey_has_a_permission",
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.key[:8]}…)"

    @property
    def permissions(self) -> list[str]:
        flags = (
            (ApiKeyPermission.READ, self.can_read),
            (ApiKeyPermission.TRADE, self.can_trade),
            (ApiKeyPermission.WITHDRAW, self.can_withdraw),
        )
        return [str(name) for name, granted in flags if granted]

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
