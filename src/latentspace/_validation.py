# SPDX-License-Identifier: BSD-3-Clause
"""Checks that turn user input into the arrays the kernels expect."""

import contextlib
import functools
import math
import numbers
import operator
import numpy as np

from ._exceptions import InvalidParameterError, UnknownModelError

__all__ = [
    "BLAS_INT_MAX",
    "as_kernel_array",
    "as_numeric",
    "as_rows",
    "check_alignment_weight",
    "check_finite",
    "check_float",
    "check_frozen",
    "check_int",
    "check_dim",
    "check_dtype",
    "check_name",
    "check_out",
    "check_seed",
    "check_values",
    "is_dask_array",
    "unknown_model",
]

# scipy.linalg.cython_blas takes 32-bit integers for sizes.
BLAS_INT_MAX = 2**31 - 1
_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


def check_int(name, value, low):
    """An integer >= ``low`` (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidParameterError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})"
        )
    value = operator.index(value)
    if value < low:
        raise InvalidParameterError(f"{name} must be >= {low}, got {value}")
    return value


def check_float(name, value, *, positive):
    """A finite real number, > 0 if ``positive`` else >= 0 (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(
            f"{name} must be a real number, got {value!r} ({type(value).__name__})"
        )
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        allowed = "finite and > 0" if positive else "finite and >= 0"
        raise InvalidParameterError(f"{name} must be {allowed}, got {value!r}")
    return value


def is_dask_array(value):
    """Whether ``value`` is a Dask array (without importing Dask)."""
    return type(value).__module__.startswith("dask.") and hasattr(value, "chunks")


def check_dtype(dtype):
    """The space's dtype, float64 or float32."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    # Identity, not ==: np.dtype(None) == float64, and '>f8' == '<f8'.
    if not any(resolved is allowed for allowed in _DTYPES):
        raise InvalidParameterError(
            f"dtype must be 'float64' or 'float32', got {dtype!r}"
        )
    return resolved


def check_dim(name, value):
    """A positive dimension that fits a BLAS integer."""
    value = check_int(name, value, 1)
    if value > BLAS_INT_MAX:
        raise InvalidParameterError(f"{name} must be <= {BLAS_INT_MAX}, got {value}")
    return value


def check_seed(seed):
    """A generator seed: None or an integer >= 0."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InvalidParameterError(
            "seed must be an integer >= 0 or None, got "
            f"{seed!r} ({type(seed).__name__})"
        )
    seed = operator.index(seed)
    if seed < 0:
        raise InvalidParameterError(f"seed must be an integer >= 0 or None, got {seed}")
    return seed


def check_name(name):
    """A model name: a non-empty string."""
    if not isinstance(name, str):
        raise InvalidParameterError(
            f"a model name must be a str, got {name!r} ({type(name).__name__})"
        )
    if not name:
        raise InvalidParameterError("a model name must not be empty")
    return name


def check_alignment_weight(value):
    """A finite alignment weight >= 0."""
    return check_float("alignment_weight", value, positive=False)


def unknown_model(name, models):
    """The error for a name that is not registered."""
    known = ", ".join(map(repr, models)) or "none"
    return UnknownModelError(f"model {name!r} is not registered (registered: {known})")


def as_numeric(value, what):
    """``value`` as an ndarray of a real numeric dtype (a masked array only if
    no entry is masked)."""
    if isinstance(value, np.ma.MaskedArray):
        masked = np.ma.getmaskarray(value)
        if masked.any():
            where = tuple(int(i) for i in np.argwhere(masked)[0])
            raise InvalidParameterError(
                f"{what} is a masked array with {int(masked.sum())} masked "
                f"entries (the first at index {where}): fill them "
                "(x.filled(value)) or drop their rows"
            )
        value = value.data
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidParameterError(f"{what} is not a numeric array: {exc}") from None
    if array.dtype.kind not in "iuf":
        raise InvalidParameterError(
            f"{what} must hold real numbers, got dtype {array.dtype}"
        )
    return array


def as_rows(value, width, dtype, what):
    """``value``, a vector or a matrix of rows of length ``width``, as C-contiguous
    ``dtype``; finiteness is not checked."""
    array = as_numeric(value, what)
    if array.ndim not in (1, 2) or array.shape[-1] != width:
        expected = f"({width},) or (n, {width})"
        raise InvalidParameterError(
            f"{what} must have shape {expected}, got shape {array.shape}"
        )
    return as_kernel_array(array, dtype, what)


def check_out(out, shape, dtype):
    """Raise unless ``out`` can receive a result of ``shape`` and ``dtype``."""
    if not isinstance(out, np.ndarray):
        raise InvalidParameterError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype or out.shape != shape:
        raise InvalidParameterError(
            f"out must have shape {shape} and dtype {dtype}, "
            f"got shape {out.shape} and dtype {out.dtype}"
        )
    if not (out.flags.c_contiguous and out.flags.aligned and out.flags.writeable
            and out.dtype.isnative):
        raise InvalidParameterError("out must be C-contiguous, aligned and writeable")


def as_kernel_array(array, dtype, what, rows=None, first_row=0):
    """``array`` as an aligned, native-endian, C-contiguous ``dtype`` ndarray
    (not a subclass), copied only if needed; raise if a finite value (in a
    row where the bool mask ``rows``, if given) does not fit ``dtype``
    (beyond its range, or non-zero but rounded to zero), naming where (rows
    counted from ``first_row``)."""
    dtype = np.dtype(dtype)
    if (type(array) is np.ndarray and array.dtype == dtype
            and array.flags.c_contiguous and array.flags.aligned):
        return array
    narrowing = array.dtype.kind == "f" and array.dtype.itemsize > dtype.itemsize
    with np.errstate(over="ignore") if narrowing else contextlib.nullcontext():
        # "E": a plain ndarray (the kernels' fast path takes no subclass).
        out = np.require(
            array, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED", "E"]
        )
    if narrowing:
        lost = np.isinf(out) if not np.isfinite(out).all() else None
        if (out == 0).any():
            lost = (out == 0) if lost is None else lost | (out == 0)
        if lost is not None:
            lost &= np.isfinite(array) & (array != 0)
            if rows is not None:
                lost &= rows[:, None]
            if lost.any():
                where = tuple(int(i) for i in np.argwhere(lost)[0])
                index = (where[0] + first_row, *where[1:]) if len(where) > 1 else where
                info = np.finfo(dtype)
                limit = (
                    f"beyond the range of the space's {dtype} (largest "
                    f"{float(info.max):.4g})"
                    if out[where] != 0
                    else f"so small that the space's {dtype} rounds it to 0 "
                    f"(smallest {float(info.smallest_subnormal):.4g})"
                )
                raise InvalidParameterError(
                    f"{what} holds {float(array[where])!r} (at index {index}), "
                    f"{limit}"
                )
    return out


def check_values(array, what, dtype, rows=None, first_row=0, bound=0.0):
    """Raise if the 2-D ``array`` (in the rows where the bool mask ``rows``,
    if given) holds NaN or Inf, naming the first such row (counted from
    ``first_row``), or if its largest magnitude is not zero but so small that
    products of its values underflow ``dtype``: training would see zeros.

    ``bound``, a lower bound of that magnitude known already (from finite
    sums of the values, whose finiteness the caller checked), spares reading
    ``array`` if it is large enough."""
    floor = _underflow_floor(np.dtype(dtype))
    if bound >= floor or array.dtype.kind != "f":
        return
    values = array if rows is None else array[rows]
    if not values.size:
        return
    largest = max(float(values.max()), -float(values.min()))
    if not math.isfinite(largest):
        check_finite(array, what, rows, first_row)
    if 0 < largest < floor:
        raise InvalidParameterError(
            f"{what} is at most {largest:.3g} in magnitude: too small for "
            f"the space's {np.dtype(dtype)}, in which products of values below "
            f"{floor:.2g} underflow (training would see zeros); scale the "
            "features up"
        )


@functools.cache
def _underflow_floor(dtype):
    """The magnitude below which squares in ``dtype`` lose precision (fall
    short of tiny / eps)."""
    info = np.finfo(dtype)
    return math.sqrt(float(info.tiny) / float(info.eps))


def check_finite(array, what, mask=None, first_row=0):
    """Raise if a 2-D ``array`` holds NaN or Inf in a row (where ``mask``, if
    given), naming the first such row (counted from ``first_row``)."""
    if np.isfinite(array).all():
        return
    bad = ~np.isfinite(array).all(axis=1)
    if mask is not None:
        bad &= mask
    if bad.any():
        row = first_row + int(np.flatnonzero(bad)[0])
        raise InvalidParameterError(f"{what} contains NaN or Inf (first in row {row})")


def check_frozen(frozen, names, config, redimension):
    """The set of frozen model names, checked against the data and ``config``."""
    if isinstance(frozen, str):
        frozen = [frozen]
    try:
        frozen = list(frozen)
    except TypeError:
        raise InvalidParameterError(
            f"frozen must be an iterable of model names, got {type(frozen).__name__}"
        ) from None
    if not frozen:
        return frozenset()
    for name in frozen:
        if name not in names:
            raise InvalidParameterError(
                f"frozen model {name!r} is not in the data "
                f"({', '.join(map(repr, names))})"
            )
    if len(set(frozen)) == len(names):
        raise InvalidParameterError("every model of the data is frozen: nothing to train")
    if redimension:
        raise InvalidParameterError(
            "latent_dim re-dimensions every model, frozen ones too: train frozen "
            "models at the space's dimension"
        )
    if config.objective == "whitened":
        raise InvalidParameterError(
            "objective='whitened' re-expresses every model's latents; to land "
            "free models on the space of frozen ones use objective='reference' "
            "(or None)"
        )
    return frozenset(frozen)
