"""The op's call signature is written once (``sparse_attn.opspec.SCHEMA``).

Scans the package source (Python through its syntax tree, C++ and other text by pattern) for
a hand-written copy of the array-level call's parameter list and fails naming the place.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from sparse_attn import opspec

PKG = Path(opspec.__file__).resolve().parent
NAMES = opspec.SCHEMA.call_arg_names()
#: A run of this many names where at least ``_MIN_SAME`` sit at their place in the call is a
#: copy (so that one renamed parameter, ``kpm`` for ``key_padding_mask``, is still caught).
_MIN_SAME = len(NAMES) - 2
_TYPE_WORD = r"(?:(?:Tensor\??|int|float|str|bool)\s+)?"
#: The names in order, separated only by punctuation/space and an optional type word
#: (the torch / C++ schema string form and prose lists).
_TEXT_RE = re.compile(
    r"[^A-Za-z_0-9]+".join(_TYPE_WORD + rf"\b{re.escape(n)}\b" for n in NAMES), re.S
)


def _is_copy(names: list[str | None]) -> bool:
    n = len(NAMES)
    for i in range(len(names) - n + 1):
        if sum(a == b for a, b in zip(names[i : i + n], NAMES, strict=True)) >= _MIN_SAME:
            return True
    return False


def _py_copies(source: str) -> list[int]:
    """Line numbers of Python nodes that restate the call's names in order."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        runs: list[list[str | None]] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            a = node.args
            runs.append([p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)])
        elif isinstance(node, ast.Call):
            runs.append([x.id if isinstance(x, ast.Name) else None for x in node.args])
            runs.append([k.arg for k in node.keywords])
        elif isinstance(node, ast.Tuple | ast.List):
            runs.append(
                [
                    x.id
                    if isinstance(x, ast.Name)
                    else x.value
                    if isinstance(x, ast.Constant) and isinstance(x.value, str)
                    else None
                    for x in node.elts
                ]
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _TEXT_RE.search(node.value):
                hits.append(node.lineno)
        if any(_is_copy(r) for r in runs):
            hits.append(node.lineno)
    return hits


def _text_copies(text: str) -> list[int]:
    return [text.count("\n", 0, m.start()) + 1 for m in _TEXT_RE.finditer(text)]


def _package_files() -> list[Path]:
    return [
        p
        for p in sorted(PKG.rglob("*"))
        if p.is_file()
        and "build" not in p.relative_to(PKG).parts
        and p.suffix in (".py", ".cpp", ".h", ".cu", ".cuh", ".md", ".txt")
        and p.name != "opspec.py"
    ]


def test_package_has_no_hand_written_signature():
    found = []
    for path in _package_files():
        text = path.read_text(encoding="utf-8")
        lines = _py_copies(text) if path.suffix == ".py" else _text_copies(text)
        found += [f"{path.relative_to(PKG.parent)}:{line}" for line in lines]
    assert not found, (
        "hand-written copy of the op's signature (derive it from opspec.SCHEMA: "
        f"call_arg_names(), bind_call(), torch_schema_string()): {', '.join(found)}"
    )


@pytest.mark.parametrize(
    "source",
    [
        "def f(query, key, value, row_ptr, col_idx, mask_idx, masks, key_padding_mask,\n"
        "      block_size: int, scale: float):\n    pass\n",
        "def f(q, k, v):\n    return g(query, key, value, row_ptr, col_idx, mask_idx, masks, kpm,"
        " block_size, scale)\n",
        "def run(query, key, value, row_ptr, col_idx, mask_idx, masks, kpm, block_size, scale):\n"
        "    pass\n",
        "S = ('attention_arrays(Tensor query, Tensor key, Tensor value, Tensor row_ptr, '\n"
        "     'Tensor col_idx, Tensor mask_idx, Tensor masks, Tensor? key_padding_mask, '\n"
        "     'int block_size, float scale) -> Tensor')\n",
        "names = ('query', 'key', 'value', 'row_ptr', 'col_idx', 'mask_idx', 'masks',"
        " 'key_padding_mask', 'block_size', 'scale')\n",
    ],
)
def test_detector_catches_a_copy(source):
    assert _py_copies(source), source


def test_detector_catches_the_cpp_schema_string():
    cpp = (
        'm.def(\n    "attention_arrays(Tensor query, Tensor key, Tensor value, Tensor row_ptr, "\n'
        '    "Tensor col_idx, Tensor mask_idx, Tensor masks, Tensor? key_padding_mask, "\n'
        '    "int block_size, float scale) -> Tensor");\n'
    )
    assert _text_copies(cpp) == [2]


def test_detector_leaves_derived_code_alone():
    source = (
        "def attention_arrays(*args, **kwargs):\n"
        "    call = opspec.SCHEMA.bind_call(args, kwargs)\n"
        "    query, key, value = call.query, call.key, call.value\n"
        "    return ext(*call.args())\n"
    )
    assert _py_copies(source) == []


def test_bind_call_positional_keyword_and_errors():
    vals = tuple(range(len(NAMES)))
    call = opspec.SCHEMA.bind_call(vals[:3], dict(zip(NAMES[3:], vals[3:], strict=True)))
    assert call.args() == vals and call.query == 0 and call.scale == vals[-1]
    with pytest.raises(TypeError, match="missing argument"):
        opspec.SCHEMA.bind_call(vals[:-1])
    with pytest.raises(TypeError, match="takes"):
        opspec.SCHEMA.bind_call((*vals, 0))
    with pytest.raises(TypeError, match="unexpected argument 'kpm'"):
        opspec.SCHEMA.bind_call(vals, {"kpm": None})
    with pytest.raises(TypeError, match="given twice"):
        opspec.SCHEMA.bind_call(vals, {"query": None})
