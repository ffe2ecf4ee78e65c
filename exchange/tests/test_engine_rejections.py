"""An engine refusal reaches the client under the catalogue's name for it, with the field order
entry names for the same fault."""

from exchange.errors import engine_rejection, rejection_body
from matching.batch_writer import REJECT_MESSAGES


def test_a_minimum_raised_as_the_order_arrived_is_refused_as_order_entry_refuses_it():
    # Order entry checks rules it caches up to 2 s; the engine had the new minimum, and its
    # refusal was OrderRejected -2099 "InvalidQuantity: rejected by the matching engine: ...".
    for code, error, number in (
        ("InvalidQuantity", "QuantityBelowMinimum", -1113),
        ("BelowMinNotional", "NotionalTooSmall", -1114),
    ):
        refused = engine_rejection(code, REJECT_MESSAGES[code], order_id=7)
        assert (refused.error, refused.error_code, refused.field) == (error, number, "quantity")
        assert "minimum" in refused.message and "just changed" in refused.message
        assert refused.extra == {"order_id": 7}


def test_other_engine_codes_keep_their_name_or_become_order_rejected():
    assert engine_rejection("PostOnlyWouldMatch", "at 1.00").field is None
    unknown = engine_rejection("InvalidStpMode", "")
    assert (unknown.error, unknown.message) == ("OrderRejected", "InvalidStpMode")
    assert rejection_body("", "") is None
