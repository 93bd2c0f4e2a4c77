"""errors.refusal_text: a restricted unpickler's refusal without torch's unsafe retry advice."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from dlrm_dist.errors import refusal_text


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_refused_pickle_is_named_without_the_advice_to_unpickle_it_anyway(protocol: int) -> None:
    with pytest.raises(pickle.UnpicklingError) as e:
        torch.load(io.BytesIO(pickle.dumps(_Payload(), protocol=protocol)), weights_only=True)
    assert "weights_only` set to `False`" in str(e.value)  # what torch says
    text = refusal_text(e.value)
    assert text.startswith("a pickle the restricted (weights_only) unpickler refuses")
    assert "False" not in text and "\n" not in text


def test_other_errors_keep_their_first_line() -> None:
    assert refusal_text(ValueError("bad\nmore")) == "ValueError: bad"
