"""OpenAPI schema post-processing (drf-spectacular hooks)."""

ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}

# Answers any operation under /api/v1 may give besides its own, each in the error shape.
ANY_OPERATION = {
    "429": "Too many requests: wait the `Retry-After` header's seconds (`TooManyRequests`).",
    "503": "The database is out of reach for a moment (`ServiceUnavailable`): retry.",
}
SIGNED_IN_OPERATION = {
    "401": "No session or API key, or the key, timestamp or signature was refused (the error "
    "names which).",
    "403": "The API key lacks the permission, its IP allow-list refuses the address, or a web "
    "session's request lacks its CSRF token.",
}
METHODS = ("get", "post", "put", "patch", "delete")


def common_error_responses(result, generator, request, public):
    """Every API operation lists the rate limit (429) and the outage (503) answers, and every
    one that needs a signed-in user the 401 and 403 ones: none did, so a client generated from
    the schema had no case for a 429 and its Retry-After."""
    if "Error" not in result.get("components", {}).get("schemas", {}):
        return result
    for path, operations in result["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method, operation in operations.items():
            if method not in METHODS:
                continue
            answers = dict(ANY_OPERATION)
            if {} not in operation.get("security", [{}]):  # {}: anyone may call it
                answers.update(SIGNED_IN_OPERATION)
            responses = operation.setdefault("responses", {})
            for status, description in answers.items():
                responses.setdefault(
                    status,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": ERROR_SCHEMA}},
                    },
                )
    return result
