"""Print the pickle-level facts of tests/fixtures/real/ that docs/formats-real.md records.

For every pickle in the fixtures (the data.pkl of each torch.save zip, plain pickle files, DCP's
.metadata and every item inside *.distcp) it prints the pickle protocol, the globals it references
(module, name), the construction opcodes it uses and the persistent ids it carries. Run it after
regenerating the fixtures with a new library version and update the doc from its output:

    python scripts/describe_real_fixtures.py [FIXTURES_DIR]

Stdlib only, and nothing from the files is executed: globals are read with pickletools, and DCP's
.metadata is opened with an unpickler that turns every class into an inert stub.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "real"
STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
CONSTRUCT_OPS = {"REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "INST", "OBJ", "BINPERSID", "PERSID"}


def pickle_globals(data: bytes) -> tuple[int, list[tuple[str, str]], set[str]]:
    """Return (protocol, globals in order of first use, construction opcodes) of one pickle."""
    protocol, found, ops = 0, [], set()
    pushed: list[Any] = []  # values pushed so far; only strings matter for STACK_GLOBAL
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "PROTO":
            protocol = arg
        elif name in STRING_OPS:
            pushed.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            pushed.append(memo.get(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ("GLOBAL", "INST"):
            module, attr = arg.split(" ", 1)
            found.append((module, attr))
        elif name == "STACK_GLOBAL":
            found.append((str(pushed[-2]), str(pushed[-1])))
        elif name != "FRAME":
            pushed.append(None)
        if name in CONSTRUCT_OPS:
            ops.add(name)
    return protocol, list(dict.fromkeys(found)), ops


class _Stub:
    """Stands for any class or function named in a pickle; records what it was built from."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Stub:
        stub = object.__new__(cls)
        stub.args, stub.state = args, None
        return stub

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


class StubUnpickler(pickle.Unpickler):
    """Resolves no global: OrderedDict stays a dict (pickles fill it by item), all else is a stub."""

    def find_class(self, module: str, name: str) -> type:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return type(name, (_Stub,), {"__module__": module})

    def persistent_load(self, pid: Any) -> Any:
        return ("persistent", pid)


def distcp_items(folder: Path) -> Iterator[tuple[str, bytes]]:
    """Every item of every *.distcp file, sliced by the (relative_path, offset, length) in .metadata."""
    metadata = StubUnpickler(io.BytesIO((folder / ".metadata").read_bytes())).load()
    for index, info in metadata.state["storage_data"].items():
        fqn, where = index.state["fqn"], info.state
        blob = (folder / where["relative_path"]).read_bytes()
        yield fqn, blob[where["offset"] : where["offset"] + where["length"]]


def zip_pickles(name: str, blob: bytes) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        for member in archive.namelist():
            if member.endswith("data.pkl"):
                yield f"{name} [{member}]", archive.read(member)


def all_pickles(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        head = path.read_bytes()[:4]
        if head.startswith(b"PK\x03\x04") and not path.name.endswith(".distcp"):
            yield from zip_pickles(rel, path.read_bytes())
        elif head[:1] == b"\x80":
            yield rel, path.read_bytes()
        elif path.name == ".metadata":
            yield rel, path.read_bytes()
    for metadata in sorted(root.rglob(".metadata")):
        for fqn, item in distcp_items(metadata.parent):
            yield from zip_pickles(f"{metadata.parent.relative_to(root)}/*.distcp item {fqn}", item)


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES
    for name, data in all_pickles(root):
        protocol, found, ops = pickle_globals(data)
        names = ", ".join(f"{m}.{n}" for m, n in found) or "(none)"
        print(f"{name}\n    protocol {protocol}; ops {sorted(ops)}\n    globals: {names}")


if __name__ == "__main__":
    main()
