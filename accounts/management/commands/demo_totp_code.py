"""`python manage.py demo_totp_code [username]`: the current TOTP code of a demo account.

For development only: it reads the secret from var/demo_credentials.json (written by
seed_demo), so a newcomer can sign in to the admin without an authenticator app.
"""

import json
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from accounts.two_factor import totp_code


class Command(BaseCommand):
    help = "Print the current two-factor code of a demo account (default: the demo admin)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username", nargs="?", default="admin")

    def handle(self, *args, username: str, **options) -> None:
        credentials_file = settings.VAR_DIR / "demo_credentials.json"
        if not credentials_file.exists():
            raise CommandError(f"{credentials_file} does not exist: run `make run` first")
        for user in json.loads(credentials_file.read_text()):
            if user["username"] == username and user.get("totp_key"):
                now = time.time()
                seconds_left = 30 - int(now) % 30
                self.stdout.write(f"{totp_code(user['totp_key'], at=now)}")
                self.stderr.write(f"(valid for about {seconds_left} more seconds)")
                return
        raise CommandError(f"no demo account {username!r} with a TOTP secret")
