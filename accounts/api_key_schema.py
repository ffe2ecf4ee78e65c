"""How the OpenAPI schema (drf-spectacular) describes API-key authentication."""

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
                "X-API-SIGNATURE (hex HMAC-SHA256 with the secret of timestamp + METHOD + path "
                "+ '?' + query when there is one + body), optional X-API-RECV-WINDOW (ms, "
                "default 5000, at most 60000). See README, API keys."
            ),
        }
