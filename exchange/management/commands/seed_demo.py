"""`python manage.py seed_demo`: demo instruments and users (idempotent; prints credentials)."""

import json
import secrets

from django.conf import settings
from django.core.management.base import BaseCommand

from exchange.services import demo_seed


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
            settings.VAR_DIR.mkdir(exist_ok=True)
            credentials_file.write_text(json.dumps(credentials, indent=2))
            credentials_file.chmod(0o600)
        created = demo_seed(credentials=credentials)
        self.stdout.write(f"demo instruments: {', '.join(created['instruments'])}")
        for user in credentials:
            self.stdout.write(f"  {user['role']:<7} {user['username']} / {user['password']}")
