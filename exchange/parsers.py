"""The API's JSON request body parser."""

import codecs

from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils import json

from exchange.json_text import LONE_SURROGATE_MESSAGE, STRICT_JSON, holds_lone_surrogate


def refuse_other_than_plain_json(request) -> None:
    """415 unless the body is declared `application/json` itself (DRF's negotiation matched
    wildcards: `*/*` and `application/*` were read as JSON) and is not compressed (a gzip body
    was read as text: "'utf-8' codec can't decode byte 0x8b"; `br` was ignored)."""
    declared = request.content_type.split(";", 1)[0].strip().lower()
    if declared != "application/json":
        raise UnsupportedMediaType(
            declared, detail=f"send the body as Content-Type application/json, not {declared!r}"
        )
    encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            declared,
            detail=f"Content-Encoding {encoding[:20]!r} is not accepted: send the body as is",
        )


class JsonBodyParser(JSONParser):
    """DRF's JSON parser, except that these are a malformed request (400 MalformedRequest):
    - a body nested too deeply for Python's decoder (say 100,000 `[`), which DRF lets through
      as a RecursionError (a 500);
    - a string holding a lone surrogate (`"\\ud800"`), in a value or a key: no field can take
      it, and the error that named it could not be encoded in the response (a 500);
    - an object with the same key twice (`{"quantity": "1", "quantity": "1000000"}`): the last
      one won, so what a proxy or a log showed of a signed body was not what was acted on."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        if request is not None:
            refuse_other_than_plain_json(request)
        encoding = get_encoding(parser_context or {})
        try:
            data = json.load(codecs.getreader(encoding)(stream), **STRICT_JSON)
        except ValueError as exc:  # json's errors, and STRICT_JSON's refusals
            raise ParseError(f"JSON parse error - {exc}") from None
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
        if holds_lone_surrogate(None, data):
            raise ParseError(f"JSON parse error - {LONE_SURROGATE_MESSAGE}")
        return data
