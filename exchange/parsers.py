"""The API's JSON request body parser."""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class JsonBodyParser(JSONParser):
    """DRF's JSON parser, except that a body nested too deeply for Python's decoder (say
    100,000 `[`) is a malformed request (400 MalformedRequest) instead of a RecursionError,
    which DRF lets through as a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
