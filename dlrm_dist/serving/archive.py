"""The ``model.pt2`` archive checked to be data before ``torch.export.load`` sees it.

``torch.export.load`` trusts its file (PyTorch: "never load data from an untrusted source").
Reading torch 2.13's loader (torch/export/pt2_archive/_package.py, torch/_export/serde/
serialize.py, torch/export/_unlift.py, torch/export/__init__.py), a file can reach Python
code by these paths, each of which this module refuses by name before anything is loaded:

- weights or constants marked ``use_pickle: true`` in ``data/{weights,constants}/*_config.json``
  -> ``torch.load`` with ``weights_only=False``; ``custom_obj_*`` constants -> TorchScript's unpickler;
  ``opaque_obj_*`` constants -> ``pickle.loads``; legacy ``data/weights/model.pt`` files.
- the sample inputs (``data/sample_inputs/model.pt``): ``torch.load(weights_only=True)``,
  then, if that fails, ``weights_only=False``.
- ``models/model.json``: its ``guards_code`` strings are compiled and ``exec``-uted by
  ``ExportedProgram.module()``; every ``expr_str`` goes through ``sympy.sympify`` (an
  ``eval``); node targets are resolved by ``getattr`` from ``torch``, ``math`` and
  ``operator`` (``torch.os.system`` is reachable) and run when the program runs.
- ``data/aotinductor/`` (a compiled shared library, loaded and run), other models, extra
  files, and the pre-2.8 zip layout that ``torch.export.load`` falls back to (read with
  Python's zipfile, whose artifacts are unpickled with ``weights_only=False`` as a fallback).

So the rule is an allow-list: only the entries ``torch.export.save`` writes for one model,
weights and constants as raw tensor bytes, sample inputs that the restricted unpickler
(``weights_only=True``) reads as plain tensors, expressions and guards of a closed grammar,
and operators from PyTorch's own kernels (no file I/O). The archive is read once into
memory, checked with both zip readers (Python's and PyTorch's, which must agree), and those
same bytes are handed to ``torch.export.load``: it can only read what was inspected, and
every unpickling it would do is either absent or the restricted one that already succeeded.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from typing import Any, Callable, Iterator, Optional

import torch
from torch._export.serde.schema import ScalarType
from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE  # the archive's dtype codes

from dlrm_dist.errors import refusal_text
from dlrm_dist.serving.manifest import MODEL_FILE, ExportError

MODEL = "model"  # torch.export.save's program name
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
PROGRAM = "models/model.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
FIXED = {  # entries with a fixed content (None: any short text)
    "archive_format": "pt2", "archive_version": "0", "byteorder": "little",
    ".data/version": None, ".data/serialization_id": None,
}
WEIGHT_FILE = re.compile(r"^weight_\d{1,9}$")
CONSTANT_FILE = re.compile(r"^tensor_\d{1,9}$")
PAYLOAD_KEYS = {"path_name", "is_param", "use_pickle", "tensor_meta"}
# Operators: PyTorch's kernels in these namespaces, minus any that take a file name.
OP_TARGET = re.compile(r"^torch\.ops\.(aten|quantized)\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")
PY_TARGETS = {f"_operator.{n}" for n in (
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne", "lt", "le", "gt",
    "ge", "and_", "or_", "not_")} | {f"torch.sym_{n}" for n in ("max", "min", "not", "float", "int", "ite", "sqrt",
                                                               "sum")} | {f"math.{n}" for n in ("ceil", "floor",
                                                                                              "trunc", "sqrt")}
# sympy's srepr vocabulary for shape expressions (what ``_print_sympy`` writes), and torch's functions.
SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality",
    "And", "Or", "Not", "true", "false", "True", "False", "oo", "zoo", "nan", "floor", "ceiling", "Piecewise",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift",
    "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "OpaqueUnaryFn_sqrt",
    # keyword arguments of Symbol(...)
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "infinite", "zero",
    "nonzero", "precision",
}
EXPR_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>'[A-Za-z][A-Za-z0-9_]{0,30}')"
                        r"|(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<op>[-+*/%(),=<>!&|~^]))")
GUARD_ATTRS = {"size", "stride", "storage_offset"}
GUARD_NODES = (ast.Expression, ast.Compare, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Constant, ast.Subscript,
               ast.Name, ast.Attribute, ast.Call, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)
SPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
MAX_TEXT = 1 << 26  # 64 MB: a program description is a few hundred KB


def _refuse(entry: str, why: str) -> ExportError:
    return ExportError(f"{MODEL_FILE}: entry {entry!r} {why}; the export is refused (re-run dlrm-export)")


# -- the zip, as both readers see it --------------------------------------------------------
def _entries(data: bytes) -> dict[str, bytes]:
    """Every entry under the archive's one root folder, by its name inside it (Python's zip reader)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise _refuse(dup, "appears twice")
            contents = {i.filename: z.read(i) for i in infos if not i.is_dir()}
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - BadZipFile, zlib.error, struct.error, EOFError...: all damage
        raise ExportError(f"{MODEL_FILE} is damaged: not a readable zip archive ({type(e).__name__}: {e})") from None
    roots = {n.split("/", 1)[0] for n in contents}
    if len(roots) != 1 or any("/" not in n for n in contents):
        raise ExportError(f"{MODEL_FILE} is not a torch.export archive: its entries are not all under one "
                          f"folder (found {sorted(roots)[:5]})")
    root = roots.pop()
    return {n[len(root) + 1:]: b for n, b in contents.items()}


def _same_as_torch(data: bytes, names: set[str]) -> None:
    """PyTorch's own zip reader (what the loader uses) must list exactly the entries inspected."""
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        theirs = set(reader.get_all_records())
    except Exception as e:  # noqa: BLE001 - any failure of the C++ reader is a damaged archive
        why = " ".join(str(e).split())[:200]
        raise ExportError(f"{MODEL_FILE} is damaged: PyTorch cannot read it as an archive ({type(e).__name__}: {why})") from None
    if theirs != names:
        odd = sorted(theirs ^ names)[:3]
        raise ExportError(f"{MODEL_FILE} is damaged or crafted: PyTorch's and Python's zip readers disagree "
                          f"about its entries ({odd})")


# -- the JSON entries ------------------------------------------------------------------------
def _json(entries: dict[str, bytes], name: str) -> Any:
    if name not in entries:
        raise _refuse(name, "is missing")
    if len(entries[name]) > MAX_TEXT:
        raise _refuse(name, f"is {len(entries[name]):,} bytes, more than a program description needs")
    try:
        return json.loads(entries[name].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _refuse(name, f"is not readable JSON ({type(e).__name__})") from None


def _payloads(entries: dict[str, bytes], config_name: str, folder: str, pattern: re.Pattern[str],
              what: str) -> set[str]:
    """A weights/constants config checked: raw tensors only; returns the files it names."""
    config = _json(entries, config_name)
    if not isinstance(config, dict) or set(config) != {"config"} or not isinstance(config["config"], dict):
        raise _refuse(config_name, "is not a payload config ({'config': {name: payload}})")
    files = set()
    for fqn, meta in config["config"].items():
        where = f"{what} {fqn!r} in {config_name}"
        if not isinstance(meta, dict) or not set(meta) <= PAYLOAD_KEYS:
            raise _refuse(f"{folder}{fqn}", f"({where}) has unknown fields {sorted(set(meta) - PAYLOAD_KEYS) if isinstance(meta, dict) else meta!r}")
        if meta.get("use_pickle") is not False:
            raise _refuse(f"{folder}{meta.get('path_name')}", f"({where}) is stored pickled (use_pickle: "
                          f"{meta.get('use_pickle')!r}): only raw tensor bytes are loaded")
        path = meta.get("path_name")
        if not isinstance(path, str) or not pattern.match(path):
            raise _refuse(f"{folder}{path}", f"({where}) is not a raw tensor file (names match {pattern.pattern})")
        if not isinstance(meta.get("tensor_meta"), dict):
            raise _refuse(f"{folder}{path}", f"({where}) has no tensor_meta")
        if f"{folder}{path}" not in entries:
            raise _refuse(f"{folder}{path}", f"({where}) is missing")
        need = _payload_bytes(meta["tensor_meta"])
        if need is None:
            raise _refuse(f"{folder}{path}", f"({where}) has a tensor_meta that is not a plain dense tensor")
        if len(entries[f"{folder}{path}"]) < need:
            raise _refuse(f"{folder}{path}", f"({where}) holds {len(entries[f'{folder}{path}']):,} bytes, its "
                          f"tensor_meta needs {need:,}: the file is cut or does not match")
        files.add(f"{folder}{path}")
    return files


def _payload_bytes(tensor_meta: dict[str, Any]) -> Optional[int]:
    """Bytes a raw tensor file must hold for its tensor_meta (None: not a dense strided tensor).

    Checked here so that a cut or mismatched file is named, not found by torch's loader (which
    logs a traceback and falls back to another reader)."""
    try:
        dtype = _SERIALIZE_TO_TORCH_DTYPE[ScalarType(tensor_meta["dtype"])]
        sizes = [int(d["as_int"]) for d in tensor_meta["sizes"]]
        strides = [int(d["as_int"]) for d in tensor_meta["strides"]]
        offset = int(tensor_meta["storage_offset"]["as_int"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(sizes) != len(strides) or min(sizes + strides + [offset], default=0) < 0:
        return None
    if 0 in sizes:
        return 0
    last = offset + sum((n - 1) * st for n, st in zip(sizes, strides))
    return (last + 1) * dtype.itemsize


def _plain_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return type(value) is torch.Tensor or type(value) is torch.nn.Parameter
    if isinstance(value, (tuple, list)):
        return all(_plain_tensors(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_tensors(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def _check_sample_inputs(entries: dict[str, bytes]) -> None:
    """The sample inputs must load with the restricted unpickler, as plain tensors (so torch's
    ``weights_only=False`` fallback is never taken)."""
    raw = entries.get(SAMPLE_INPUTS)
    if raw is None:
        raise _refuse(SAMPLE_INPUTS, "is missing")
    if not raw:
        return  # torch reads an empty entry as no sample inputs
    try:
        value = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the restricted unpickler refuses, we refuse
        raise _refuse(SAMPLE_INPUTS, f"is not plain tensors the restricted unpickler reads "
                      f"({refusal_text(e)[:200]})") from None
    if not isinstance(value, tuple) or not _plain_tensors(value):
        raise _refuse(SAMPLE_INPUTS, f"holds {type(value).__name__} values that are not plain tensors")


# -- the program ----------------------------------------------------------------------------
def _walk(tree: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, key, value) of a JSON tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield path, k, v
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _walk(v, f"{path}[{i}]")


def _safe_expr(text: str) -> bool:
    """A sympy srepr of a shape expression: known function names, symbol names, numbers, operators."""
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = EXPR_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            return False
        if m.group("name") and m.group("name") not in SYMPY_NAMES and not re.fullmatch(r"[a-z]{1,3}\d+", m.group("name")):
            return False
        pos = m.end()
    return len(text) < 10_000


def _safe_guard(text: str) -> bool:
    """A shape guard: comparisons and arithmetic over ``L['input'][i].size()[j]`` and integers.

    torch splices the text itself into generated code (and an unparsed copy into a
    double-quoted message), so beyond the syntax tree, comments, line breaks, backslashes and
    string keys that are not plain identifiers are refused too.
    """
    if any(c in text for c in "#\n\r\\\"") or len(text) > 10_000:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in ast.walk(tree):
        if not isinstance(node, GUARD_NODES):
            return False
        if isinstance(node, ast.Name) and node.id != "L":
            return False
        if isinstance(node, ast.Attribute) and node.attr not in GUARD_ATTRS:
            return False
        if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Attribute) or node.keywords
                                           or not all(isinstance(a, ast.Constant) for a in node.args)):
            return False
        if isinstance(node, ast.Constant) and not (isinstance(node.value, int) or isinstance(node.value, str)
                                                   and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", node.value)):
            return False
    return True


def _safe_target(target: str) -> bool:
    if target in PY_TARGETS:
        return True
    m = OP_TARGET.match(target)
    if not m:
        return False
    try:
        op = getattr(getattr(getattr(torch.ops, m.group(1)), m.group(2)), m.group(3))
    except (AttributeError, RuntimeError):
        return False
    if not isinstance(op, torch._ops.OpOverload):
        return False
    # No kernel that reads or writes a file by name (aten::save, aten::from_file).
    return not any(a.name in ("filename", "path", "file") or str(a.type) == "str" and "file" in a.name
                   for a in op._schema.arguments)


def _spec_types(spec: Any) -> set[Any]:
    """The pytree node types a serialized TreeSpec names (in_spec / out_spec)."""
    found: set[Any] = set()
    for _, key, value in _walk(spec):
        if key == "type":
            found.add(value if value is None or isinstance(value, str) else repr(value))
    return found


def _check_program(entries: dict[str, bytes]) -> None:
    program = _json(entries, PROGRAM)
    if not isinstance(program, dict):
        raise _refuse(PROGRAM, "is not a program description")
    guards = program.get("guards_code", [])
    if not isinstance(guards, list) or not all(isinstance(g, str) and _safe_guard(g) for g in guards):
        bad = next((g for g in guards if not (isinstance(g, str) and _safe_guard(g))), guards) \
            if isinstance(guards, list) else guards
        raise _refuse(PROGRAM, f"has guard code that is not a shape check ({str(bad)[:120]!r}): it would be executed")
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("expr_str", lambda v: isinstance(v, str) and _safe_expr(v), "a shape expression outside sympy's "
                                                                     "vocabulary (it would be eval-ed)"),
        ("target", lambda v: isinstance(v, str) and _safe_target(v), "an operator that is not one of PyTorch's "
                                                                     "kernels"),
    ]
    for path, key, value in _walk(program):
        for name, ok, why in checks:
            if key == name and not ok(value):
                raise _refuse(PROGRAM, f"has {why} at {path}.{key}: {str(value)[:120]!r}")
        if key in ("in_spec", "out_spec") and isinstance(value, str):
            try:
                types = _spec_types(json.loads(value))
            except (ValueError, RecursionError):
                raise _refuse(PROGRAM, f"has an unreadable {key} at {path}") from None
            if not types <= SPEC_TYPES:
                raise _refuse(PROGRAM, f"has input/output containers {sorted(map(str, types - SPEC_TYPES))} "
                                       f"at {path}.{key}: only tuples, lists and dicts of tensors are served")


def inspect_archive(data: bytes) -> None:
    """Refuses (ExportError naming the entry) an archive that is not provably data; nothing is unpickled
    except the sample inputs, by the restricted (weights_only) unpickler."""
    entries = _entries(data)
    allowed = set(FIXED) | {PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG, SAMPLE_INPUTS}
    for name, content in FIXED.items():
        if name not in entries:
            raise _refuse(name, "is missing")
        if content is not None and entries[name].decode("utf-8", "replace").strip() != content:
            raise _refuse(name, f"is {entries[name][:20]!r}, not {content!r}")
    _same_as_torch(data, set(entries))
    allowed |= _payloads(entries, WEIGHTS_CONFIG, "data/weights/", WEIGHT_FILE, "weight")
    allowed |= _payloads(entries, CONSTANTS_CONFIG, "data/constants/", CONSTANT_FILE, "constant")
    for name in sorted(entries):
        if name not in allowed:
            raise _refuse(name, "is not part of a plain torch.export program (only weights, constants, the "
                          "program and its sample inputs are; no pickles, libraries or extra files)")
    _check_program(entries)
    _check_sample_inputs(entries)


def load_checked(data: bytes) -> torch.export.ExportedProgram:
    """``data`` inspected, then loaded by ``torch.export.load`` from those same bytes."""
    inspect_archive(data)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - a malformed program that passed inspection is still damaged
        first = str(e).splitlines()[0][:300] if str(e) else ""
        raise ExportError(f"{MODEL_FILE} cannot be loaded by torch.export ({type(e).__name__}: {first})") from None
