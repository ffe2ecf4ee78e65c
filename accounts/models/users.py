"""Users of the exchange: traders, staff and compliance officers."""

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """A trader, staff member or compliance officer; users sign in with their email."""

    email = models.EmailField(unique=True)

    REQUIRED_FIELDS = ["email"]

    def __str__(self) -> str:
        return self.username
