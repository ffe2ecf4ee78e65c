"""Template context for the navigation: whether the visitor still owes the OTP step."""

from django.http import HttpRequest

from accounts.two_factor import two_factor_pending


def sign_in_state(request: HttpRequest) -> dict:
    user = getattr(request, "user", None)
    # A callable: templates call it only where they use it (one query, only then).
    return {"two_factor_pending": lambda: two_factor_pending(user)}
