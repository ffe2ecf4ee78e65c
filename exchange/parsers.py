"""The API's JSON request body parser."""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from exchange.json_text import LONE_SURROGATE_MESSAGE, holds_lone_surrogate


class JsonBodyParser(JSONParser):
    """DRF's JSON parser, except that these are a malformed request (400 MalformedRequest):
    - a body nested too deeply for Python's decoder (say 100,000 `[`), which DRF lets through
      as a RecursionError (a 500);
    - a string holding a lone surrogate (`"\\ud800"`), in a value or a key: no field can take
      it, and the error that named it could not be encoded in the response (a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
        if holds_lone_surrogate(None, data):
            raise ParseError(f"JSON parse error - {LONE_SURROGATE_MESSAGE}")
        return data
