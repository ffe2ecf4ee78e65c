"""DRF's content negotiation, with refusals that say what to send instead."""

from django.http import Http404
from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation

from exchange.parsers import refuse_other_than_plain_json


class JsonContentNegotiation(DefaultContentNegotiation):
    """A body no parser takes, an Accept header no renderer meets and an unknown `?format=`
    had DRF's answers, none naming what to send: 415 'Unsupported media type
    "application/x-www-form-urlencoded" in request.' (curl -d's default), 406 'Could not
    satisfy the request Accept header.' and a bare 404 'Not found.' for the query parameter."""

    def select_parser(self, request, parsers):
        parser = super().select_parser(request, parsers)
        if parser is None:
            refuse_other_than_plain_json(request)  # 415 naming application/json
        return parser

    def select_renderer(self, request, renderers, format_suffix=None):
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except Http404:  # DRF's answer to a `format` no renderer has
            # Here, not at the top: DRF's APIView imports this class while exchange.errors
            # (through exchange.api_errors) is still importing DRF's views.
            from exchange.errors import echoed, trading_error

            formats = ", ".join(dict.fromkeys(renderer.format for renderer in renderers))
            sent = request.query_params.get(self.settings.URL_FORMAT_OVERRIDE)
            raise trading_error(
                "InvalidParameter",
                f"format must be {formats} (or leave it out); got {echoed(sent)}",
                field=self.settings.URL_FORMAT_OVERRIDE,
            ) from None
        except NotAcceptable:
            types = ", ".join(dict.fromkeys(renderer.media_type for renderer in renderers))
            raise NotAcceptable(
                f"the answer is {types}: send Accept: {types} (or */*), or no Accept header"
            ) from None
