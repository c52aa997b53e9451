# SPDX-License-Identifier: BSD-3-Clause
"""Random generator states as JSON, and generators made from untrusted ones.

A saved space holds the state of its generator so that a loaded space
registers exactly as the original would (docs/file-format.md).
"""

import numpy as np

__all__ = ["encode_rng_state", "is_int", "make_generator"]

# The state of every bit generator a file may hold, as NumPy's ``state``
# property gives it: nested keys down to an int ``b`` (an integer in
# [0, b)) or a ``(dtype, length)`` array (written as a JSON list).
_U32, _U128 = 2**32, 2**128
_PCG = {"state": {"state": _U128, "inc": _U128}, "has_uint32": 2, "uinteger": _U32}
_RNG_STATES = {
    "PCG64": _PCG,
    "PCG64DXSM": _PCG,
    "MT19937": {"state": {"key": ("u4", 624), "pos": 625}},
    "Philox": {
        "state": {"counter": ("u8", 4), "key": ("u8", 2)},
        "buffer": ("u8", 4),
        "buffer_pos": 5,
        "has_uint32": 2,
        "uinteger": _U32,
    },
    "SFC64": {"state": {"state": ("u8", 4)}, "has_uint32": 2, "uinteger": _U32},
}


def encode_rng_state(state):
    """A bit generator's state with arrays turned into JSON lists."""
    if isinstance(state, dict):
        return {key: encode_rng_state(value) for key, value in state.items()}
    if isinstance(state, np.ndarray):
        return {"__ndarray__": state.dtype.str, "data": state.tolist()}
    if isinstance(state, np.generic):
        return state.item()
    return state


def is_int(value, bound):
    """Whether ``value`` is an int (not a bool) in [0, bound)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < bound


def _decoded(value, schema, where):
    """``value`` (JSON) checked against ``schema`` (see `_RNG_STATES`), with
    arrays decoded; ValueError naming what is wrong."""
    if isinstance(schema, dict):
        if not isinstance(value, dict) or set(value) != set(schema):
            raise ValueError(f"{where} must have the keys {', '.join(sorted(schema))}")
        return {key: _decoded(value[key], part, f"{where}.{key}")
                for key, part in schema.items()}
    if isinstance(schema, tuple):
        dtype, length = np.dtype(schema[0]), schema[1]
        if not (
            isinstance(value, dict)
            and set(value) == {"__ndarray__", "data"}
            and value["__ndarray__"] in ("<" + dtype.str[1:], ">" + dtype.str[1:])
            and isinstance(value["data"], list)
            and len(value["data"]) == length
            and all(is_int(v, 2 ** (8 * dtype.itemsize)) for v in value["data"])
        ):
            raise ValueError(
                f"{where} must be an array of {length} {dtype.name} values"
            )
        return np.array(value["data"], dtype=dtype)
    if not is_int(value, schema):
        raise ValueError(f"{where} must be an integer in [0, {schema - 1}]")
    return value


def make_generator(state):
    """A new `numpy.random.Generator` in the (JSON-decoded) ``state``.

    Raises ValueError unless ``state`` is the state of a bit generator of
    `_RNG_STATES` with every value of the right type and in range.
    """
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if not isinstance(name, str) or name not in _RNG_STATES:
        raise ValueError(f"unsupported random bit generator {name!r:.40}")
    fields = {key: value for key, value in state.items() if key != "bit_generator"}
    decoded = {"bit_generator": name, **_decoded(fields, _RNG_STATES[name], name)}
    bit_generator = getattr(np.random, name)()
    try:
        bit_generator.state = decoded
    except (TypeError, OverflowError) as exc:  # a state NumPy has more rules for
        raise ValueError(str(exc)) from None
    return np.random.Generator(bit_generator)
