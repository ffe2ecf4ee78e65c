"""DRF authentication for web sessions that respects the OTP step."""

from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import AuthenticationFailed

from accounts.two_factor import staff_unverified, two_factor_pending


class VerifiedSessionAuthentication(SessionAuthentication):
    """Session authentication, except that a user with an authenticator who has not passed the
    OTP step yet is not authenticated (a half-signed-in session cannot use the API), and a
    staff member must have passed it: the admin requires it, and a password alone had credited
    deposits, read the audit trail and minted API keys over REST."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, auth = result
        if two_factor_pending(user):
            return None
        if staff_unverified(user):
            raise AuthenticationFailed(
                "Staff accounts use the API only after two-factor authentication: enrol at "
                "/accounts/2fa/enrol/ or sign in with your code"
            )
        return user, auth
