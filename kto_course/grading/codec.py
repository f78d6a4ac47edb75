"""The safe encoding of what a graded function returns: the worker writes it, the grading
process reads it. JSON underneath, never pickle: reading it back runs no code.

Allowed: None, bools, ints, floats (NaN and inf too), strings, lists, tuples, dicts, NumPy
arrays and scalars (numeric and bool dtypes) and torch tensors (as an array plus its dtype and
``requires_grad``). Anything else is encoded as an ``Unreadable`` marker carrying only its type
name; ``loads`` turns it into an ``Unreadable`` object that the grader reports as "returned a
<type> that the grader cannot read".
"""

from __future__ import annotations

import base64
import json

MAX_DEPTH = 20
MAX_ITEMS = 1_000_000
_DTYPES = {
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
}  # fmt: skip


class Unreadable:
    """A value the grader cannot read back: only its type's name survives."""

    def __init__(self, type_name: str):
        self.type_name = str(type_name)[:80]

    def __repr__(self) -> str:
        return f"<a {self.type_name} that the grader cannot read>"


def mutable(value) -> bool:
    """Whether a call could have changed this argument in place (arrays, tensors, lists, dicts)."""
    kind = type(value).__module__ + "." + type(value).__name__
    return kind in ("numpy.ndarray", "torch.Tensor", "builtins.list", "builtins.dict")


def _array(a) -> dict:
    import numpy as np

    a = np.array(a, order="C", copy=True)
    if a.dtype.name not in _DTYPES:
        return {"t": "unreadable", "type": f"array of {a.dtype.name}"}
    return {"t": "nd", "dtype": a.dtype.name, "shape": list(a.shape),
            "data": base64.b64encode(a.tobytes()).decode("ascii")}  # fmt: skip


def _enc(value, depth: int, budget: list):
    budget[0] += 1
    if depth > MAX_DEPTH or budget[0] > MAX_ITEMS:
        return {"t": "unreadable", "type": "structure nested too deep or too large"}
    kind = type(value)
    if value is None or kind in (bool, str):
        return value
    if kind is int:
        return value if abs(value) < 2**63 else {"t": "bigint", "v": str(value)}
    if kind is float:
        return {"t": "float", "v": repr(value)}
    if kind in (list, tuple):
        items = [_enc(v, depth + 1, budget) for v in value]
        return items if kind is list else {"t": "tuple", "items": items}
    if kind is dict:
        return {"t": "dict", "items": [[_enc(k, depth + 1, budget), _enc(v, depth + 1, budget)]
                                       for k, v in value.items()]}  # fmt: skip
    module = kind.__module__
    if module == "numpy" and kind.__name__ == "ndarray":
        return _array(value)
    if module == "numpy" and hasattr(value, "dtype") and hasattr(value, "shape"):
        enc = _array(value)  # a NumPy scalar: a 0-d array, read back as that scalar
        return {**enc, "scalar": True} if enc["t"] == "nd" else enc
    if module == "torch" and kind.__name__ in ("Tensor", "Parameter"):
        enc = _array(value.detach().cpu().numpy())
        if enc["t"] == "nd":
            enc.update(t="tensor", requires_grad=bool(value.requires_grad))
        return enc
    return {"t": "unreadable", "type": kind.__name__}


def dumps(obj) -> bytes:
    """A message (a dict of plain fields) with its values encoded, as UTF-8 JSON bytes."""
    return json.dumps(_enc(obj, 0, [0]), allow_nan=False).encode("utf-8")


def _dec(value, depth: int):
    if depth > MAX_DEPTH + 2:
        return Unreadable("structure nested too deep")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, list):
        return [_dec(v, depth + 1) for v in value]
    if not isinstance(value, dict):
        return Unreadable(type(value).__name__)
    t = value.get("t")
    if t == "float":
        return float(value["v"])
    if t == "bigint":
        return int(value["v"])
    if t == "tuple":
        return tuple(_dec(v, depth + 1) for v in value["items"])
    if t == "dict":
        out = {}
        for k, v in value["items"]:
            k = _dec(k, depth + 1)
            try:
                out[k] = _dec(v, depth + 1)
            except TypeError:  # an unhashable key
                return Unreadable("dict")
        return out
    if t in ("nd", "tensor"):
        import numpy as np

        dtype = str(value["dtype"])
        if dtype not in _DTYPES:
            return Unreadable(f"array of {dtype}")
        shape = tuple(int(n) for n in value["shape"])
        a = np.frombuffer(base64.b64decode(value["data"]), dtype=dtype).reshape(shape).copy()
        if t == "tensor":
            import torch

            tensor = torch.from_numpy(a)
            if value.get("requires_grad") and tensor.is_floating_point():
                tensor.requires_grad_(True)
            return tensor
        return a[()] if value.get("scalar") else a
    if t == "unreadable":
        return Unreadable(value.get("type", "value"))
    return Unreadable("value")


def loads(data: bytes):
    """A message written by ``dumps``: plain data, arrays and tensors only."""
    return _dec(json.loads(data.decode("utf-8")), 0)


def find_unreadable(value, depth: int = 0):
    """The first ``Unreadable`` inside a decoded value, or None."""
    if isinstance(value, Unreadable):
        return value
    if depth > MAX_DEPTH + 2:
        return None
    if isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, dict):
        items = list(value.keys()) + list(value.values())
    else:
        return None
    for item in items:
        found = find_unreadable(item, depth + 1)
        if found is not None:
            return found
    return None
