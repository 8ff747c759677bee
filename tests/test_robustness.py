"""Each bad input of tests/robustness.py is refused naming its parameter; valid edge cases match the reference."""

import pytest
from robustness import CASES, observe


@pytest.mark.parametrize("case", [c for c in CASES if c.param], ids=lambda c: c.tried)
def test_bad_input_is_refused_with_the_parameter_named(case):
    outcome = observe(case)
    assert outcome.refused and outcome.named, outcome.text


@pytest.mark.parametrize("case", [c for c in CASES if not c.param], ids=lambda c: c.tried)
def test_valid_edge_input_returns_the_reference_result(case):
    outcome = observe(case)
    assert not outcome.refused and not outcome.wrong_output, outcome.text
