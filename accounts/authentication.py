"""DRF authentication for web sessions that respects the OTP step."""

from rest_framework.authentication import SessionAuthentication

from accounts.two_factor import two_factor_pending


class VerifiedSessionAuthentication(SessionAuthentication):
    """Session authentication, except that a user with an authenticator who has not passed the
    OTP step yet is not authenticated (a half-signed-in session cannot use the API)."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, auth = result
        if two_factor_pending(user):
            return None
        return user, auth
