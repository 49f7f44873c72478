"""Property: for any mix of safe and unsafe calls, and any point where the pickle is cut off, the
verdict equals a reference classifier over the same calls, and nothing ever runs."""
from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.storage.safe_pickle import PARTIAL_ATTR, safe_loads
from tests.security.corpus import PROTO2, call, g, s, t

MARKER = Path(tempfile.gettempdir()) / "ckptkit-property-MARKER"
DANGEROUS = [("os", "system"), ("subprocess", "call"), ("builtins", "eval"), ("pip", "main"),
             ("importlib", "import_module"), ("torch.serialization", "load"), ("venv", "create"),
             ("pydoc", "pipepager"), ("functools", "partial")]
PROJECT = ["Config", "TrainingArguments", "RunState"]

item = st.one_of(
    st.tuples(st.just("int"), st.integers(0, 255)),
    st.tuples(st.just("str"), st.text("abc", max_size=5)),
    st.tuples(st.just("odict"), st.integers(0, 3)),
    st.tuples(st.just("class"), st.sampled_from(PROJECT)),
    st.tuples(st.just("newobj"), st.sampled_from(PROJECT)),
    st.tuples(st.just("danger"), st.sampled_from(DANGEROUS)),
    st.tuples(st.just("chain"), st.sampled_from(["system", "popen"])),
)


def encode(kind: str, arg: object) -> tuple[bytes, set[str]]:
    """One item's opcodes, and the dangerous globals its calls make (the reference classifier)."""
    if kind == "int":
        return b"K" + bytes([arg]), set()
    if kind == "str":
        return s(arg), set()
    if kind == "odict":
        pairs = b"]" + b"".join(t(s(f"k{i}"), b"K\x01") + b"a" for i in range(arg))
        return call(g("collections", "OrderedDict"), pairs), set()
    if kind == "class":
        return call(g("__main__", arg), b"K\x01", s("x")), set()
    if kind == "newobj":
        return g("__main__", arg) + b")\x81}" + s("lr") + b"K\x02sb", set()
    if kind == "danger":
        module, name = arg
        return call(g(module, name), s(f"touch {MARKER}")), {f"{module}.{name}"}
    inner = call(g("builtins", "getattr"), call(g("builtins", "__import__"), s("os")), s(arg))
    return call(inner, s(f"touch {MARKER}")), {"builtins.getattr", "builtins.__import__"}


@settings(max_examples=150, deadline=None)
@given(items=st.lists(item, max_size=12), cut=st.one_of(st.none(), st.integers(0, 400)))
def test_verdict_equals_the_reference_classifier_even_when_the_pickle_is_cut(items, cut) -> None:
    data = bytearray(PROTO2 + b"]")
    expected_by_end: list[tuple[int, set[str]]] = []
    for kind, arg in items:
        opcodes, dangerous = encode(kind, arg)
        data += opcodes + b"a"
        expected_by_end.append((len(data) - 1, dangerous))   # the item's call is made before its APPEND
    data += b"."
    if cut is not None and cut < len(data):
        data = data[:cut]
    try:
        globals_ = safe_loads(bytes(data)).globals
        complete = True
    except Exception as exc:
        globals_ = getattr(exc, PARTIAL_ATTR)
        complete = False
    got = {g_.qualified_name for g_ in globals_ if g_.kind == "dangerous" and g_.module}
    expected = set().union(*[d for end, d in expected_by_end if end <= len(data)])
    # Fail closed: everything called before the stop is named; a cut pickle never reads as complete.
    assert expected <= got
    assert got <= set().union(*[d for _, d in expected_by_end])
    assert complete == (cut is None or cut >= len(PROTO2) + 1 + sum(len(encode(k, a)[0]) + 1 for k, a in items) + 1)
    assert not [g_ for g_ in globals_ if g_.kind == "dangerous" and not g_.module and not expected]
    assert not MARKER.exists()
