"""OpenAPI schema post-processing (drf-spectacular hooks)."""

ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}

# Answers any operation under /api/v1 may give besides its own, each in the error shape.
ANY_OPERATION = {
    "400": "A query parameter the operation does not read, or one given twice "
    "(`UnexpectedParameter`), or a NUL character in the path or the query string "
    "(`MalformedRequest`); besides, the operation's own refusals (the error and `field` say "
    "which).",
    "429": "Too many requests: wait the `Retry-After` header's seconds (`TooManyRequests`).",
    "503": "The database (for the order book and its spread: Redis, which holds the book) is "
    "out of reach for a moment (`ServiceUnavailable`): retry.",
}
SIGNED_IN_OPERATION = {
    "401": "No session or API key, or the key, timestamp or signature was refused (the error "
    "names which).",
    "403": "The API key lacks the permission, its IP allow-list refuses the address, or a web "
    "session's request lacks its CSRF token.",
}
# A list's cursor the server did not hand out, or a path naming what is not the caller's (an
# order, a key, another user's id; the whole audit API to all but compliance staff).
NOT_FOUND = (
    'A cursor the server did not hand out (`NotFound`, "Invalid cursor"), or nothing of '
    "yours by that id (`NotFound`, `OrderNotFound`, `ApiKeyNotFound`)."
)
# Answers of every operation that reads a JSON body, whatever its own.
BODY_OPERATION = {
    "413": "The request body is over 2.5 MB (`PayloadTooLarge`).",
    "415": "The body is not declared `Content-Type: application/json` itself, or is compressed "
    "(`UnsupportedMediaType`).",
}
METHODS = ("get", "post", "put", "patch", "delete")


def _may_be_not_found(operation: dict) -> bool:
    """Pages (a `cursor`) and operations naming an object in their path (an unknown symbol is
    a 400 `UnknownSymbol` instead)."""
    names = {(p["in"], p["name"]) for p in operation.get("parameters", [])}
    return ("query", "cursor") in names or any(
        where == "path" and name != "symbol" for where, name in names
    )


def common_error_responses(result, generator, request, public):
    """Every API operation lists the rate limit (429), the outage (503) and the refused query
    (400) answers, every one that needs a signed-in user the 401 and 403 ones, every one that
    reads a body the 413 and 415 ones, and pages and operations naming an object the 404: none
    did, so a client generated from the schema had no case for a 429 and its Retry-After, nor
    for a 400 from /balances or a withdrawal, nor (but placing an order) for a 415."""
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
            if "requestBody" in operation:
                answers.update(BODY_OPERATION)
            if _may_be_not_found(operation):
                answers["404"] = NOT_FOUND
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
