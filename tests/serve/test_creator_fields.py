"""`v2m serve`'s curve-edit and loop form fields: parsed into the `Request`, checked at the edge."""

from __future__ import annotations

import pytest

from v2m.core.errors import InputError
from v2m.serve.config import GENERATE_FIELDS, parse_generate_fields


def test_creator_fields_reach_the_request():
    req = parse_generate_fields({"hits": "2.5, 8:2", "suppress": "3-5", "curve": "[[0, 0], [4, 1]]",
                                 "curve_mix": "0.5", "loop": "true"}, 100).request
    assert req.hits == ((2.5, 1.0), (8.0, 2.0)) and req.suppress == ((3.0, 5.0),)
    assert req.curve_points == ((0.0, 0.0), (4.0, 1.0)) and req.curve_mix == 0.5 and req.loop is True
    assert {"hits", "curve", "curve_mix", "suppress", "loop"} <= set(GENERATE_FIELDS)


@pytest.mark.parametrize("fields", [{"hits": "x"}, {"hits": "2:-1"}, {"suppress": "5-3"}, {"curve": "[1, 2"},
                                    {"curve": "[[0, 1]]"}, {"curve_mix": "0.5"}, {"loop": "maybe"},
                                    {"curve": "[[0, 0], [1, 1]]", "curve_mix": "2"}])
def test_bad_creator_fields_are_422(fields):
    with pytest.raises(InputError):
        parse_generate_fields(fields, 100)
