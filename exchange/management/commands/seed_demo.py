"""`python manage.py seed_demo`: demo instruments and users (idempotent; prints credentials).

The demo admin gets a TOTP device with a secret kept in the credentials file, since the admin
requires two-factor authentication: `make run` prints the secret and its otpauth URI, and
`manage.py demo_totp_code` prints the current code. Development credentials only.
"""

import json
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from accounts.two_factor import (
    otpauth_uri,
    totp_key_new,
    totp_secret_base32,
    two_factor_seed_device,
)
from exchange.services import demo_seed


def demo_email(username: str) -> str:
    return f"{username}@demo.exchange.local"


class Command(BaseCommand):
    help = "Create the demo instruments, an admin and two traders; print their credentials."

    def handle(self, *args, **options) -> None:
        credentials_file = settings.VAR_DIR / "demo_credentials.json"
        if credentials_file.exists():
            credentials = json.loads(credentials_file.read_text())
        else:
            credentials = [
                {"role": "admin", "username": "admin"},
                {"role": "trader", "username": "alice"},
                {"role": "trader", "username": "bob"},
            ]
            for user in credentials:
                user["password"] = secrets.token_urlsafe(12)
        # Files written before sign-in by email and admin 2FA lack these; add them once.
        for user in credentials:
            user.setdefault("email", demo_email(user["username"]))
            if user["role"] == "admin":
                user.setdefault("totp_key", totp_key_new())
                # What authenticator apps take (the key is hex, as django-otp keeps it).
                user["totp_secret"] = totp_secret_base32(user["totp_key"])
        settings.VAR_DIR.mkdir(exist_ok=True)
        credentials_file.write_text(json.dumps(credentials, indent=2))
        credentials_file.chmod(0o600)
        created = demo_seed(credentials=credentials)
        User = get_user_model()
        for user in credentials:
            if user.get("totp_key"):
                account = User.objects.get(username=user["username"])
                two_factor_seed_device(user=account, key_hex=user["totp_key"])
        self.stdout.write(f"demo instruments: {', '.join(created['instruments'])}")
        for user in credentials:
            self.stdout.write(f"  {user['role']:<7} {user['email']} / {user['password']}")
            if user.get("totp_key"):
                self.stdout.write(
                    f"          TOTP secret {totp_secret_base32(user['totp_key'])}  "
                    f"{otpauth_uri(key_hex=user['totp_key'], account=user['email'])}"
                )
