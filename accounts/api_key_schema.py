"""How the OpenAPI schema (drf-spectacular) describes API-key and session authentication."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeySignatureScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.api_key_auth.ApiKeyAuthentication"
    name = "ApiKeySignature"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-KEY",
            "description": (
                "Signed requests: X-API-KEY (the key), X-API-TIMESTAMP (ms since the epoch), "
                "X-API-SIGNATURE (hex HMAC-SHA256 with the secret of timestamp (+ ',' + the "
                "receive window when one is sent) + METHOD + path + '?' + query when there is "
                "one + body; a GET, HEAD or DELETE carries none), optional X-API-RECV-WINDOW "
                "(ms, default 5000, at most 60000). See README, API keys."
            ),
        }


class VerifiedSessionScheme(OpenApiAuthenticationExtension):
    """The web session (a cookie), past the OTP step where the user has an authenticator."""

    target_class = "accounts.authentication.VerifiedSessionAuthentication"
    name = "cookieAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "cookie",
            "name": "sessionid",
            "description": (
                "The web session of /accounts/login/ (and its OTP step when the user has an "
                "authenticator; staff always). Unsafe methods need the CSRF token."
            ),
        }
