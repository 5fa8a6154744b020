"""Hypothesis strategies shared by the protocol fuzz tests: JSON values built from a protocol's
own field names and event types, plus the hostile scalars (huge integers, odd text)."""

from __future__ import annotations

from hypothesis import strategies as st


def json_values(names, types, *extra_scalars):
    """Any JSON value: scalars (`extra_scalars` among them), lists, and objects keyed by `names`."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**400), max_value=10**400),
        *extra_scalars,
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        types,
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(names | st.text(max_size=6), inner, max_size=5)
        ),
        max_leaves=20,
    )
