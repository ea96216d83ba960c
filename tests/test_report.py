"""report.py's fast paths give exactly what the plain ones give: the JSON text and the bulk-made sites."""

import dataclasses
import json

from hypothesis import given
from hypothesis import strategies as st

from ftpatch.report import json_text
from ftpatch.scan import scan_path
from ftpatch.sites import Site

scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
docs = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner)
        | st.dictionaries(st.text() | st.integers(), inner)
        | st.lists(st.dictionaries(st.text(), scalars))
    ),
    max_leaves=40,
)


@given(docs)
def test_json_text_is_json_dumps_indent_2(doc: object) -> None:
    assert json_text(doc) == json.dumps(doc, indent=2)


def test_json_text_of_sites_like_lists() -> None:
    sites = [{"function": f"f{i}%s{{}}\n\0é", "offset": i, "target": None, "ok": i % 2 == 0} for i in range(50)]
    for doc in ({"files": [{"path": "a", "sites": sites}]}, [sites[:1], [{}], [{}, {"a": 1}], [{"a": 1}, {"b": [1]}]]):
        assert json_text(doc) == json.dumps(doc, indent=2)


def test_bulk_sites_equal_dataclass_sites() -> None:
    for path in ("fixtures/x86_64-pie.o", "fixtures/i386-pic.o", "fixtures/x86_64-fentry.o"):
        for result in scan_path(path):
            for site in result.sites:
                fields = {f.name: getattr(site, f.name) for f in dataclasses.fields(Site)}
                reloc = site.reloc
                plain = Site(**fields | {"reloc": reloc and dataclasses.replace(reloc)})
                assert site == plain and hash(site) == hash(plain) and repr(site) == repr(plain)
