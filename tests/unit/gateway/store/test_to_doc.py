"""``to_doc`` is ``dataclasses.asdict`` (its fast path for flat records included), for
every stored record type."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store import records
from gateway.store.records import to_doc

RECORD_TYPES = [
    cls
    for _, cls in inspect.getmembers(records, inspect.isclass)
    if dataclasses.is_dataclass(cls) and cls.__module__ == records.__name__
]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_DOCS = st.dictionaries(st.text(max_size=8), _JSON, max_size=4)
OVERRIDES = {
    records.ClusterStatus: st.builds(
        records.ClusterStatus,
        conditions=st.lists(_DOCS, max_size=3).map(tuple),
        version=st.none() | _DOCS,
        nodes=st.lists(_DOCS, max_size=3).map(tuple),
        agents=st.lists(_DOCS, max_size=3).map(tuple),
    )
}


def test_every_record_type_is_covered() -> None:
    names = {cls.__name__ for cls in RECORD_TYPES}
    assert {"Replica", "Cluster", "ClusterStatus", "RoleTemplate", "User"} <= names


@pytest.mark.parametrize("cls", RECORD_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_to_doc_is_asdict(cls: type, data: st.DataObject) -> None:
    strategy = OVERRIDES[cls] if cls in OVERRIDES else st.from_type(cls)
    record = data.draw(strategy)
    doc = to_doc(record)
    assert doc == dataclasses.asdict(record)
    assert json.dumps(doc, sort_keys=True, default=str) == json.dumps(
        dataclasses.asdict(record), sort_keys=True, default=str
    )
