"""Grouped expert-call seconds remembered by packed key (a device's slot counts sorted and packed into
one int64, :mod:`moesim.sim.nodetimes`): an open-addressing hash table looked up in one compiled pass
(numba), so a chunk's [S, L, G] keys need no sort, de-duplication or binary search.

The cost model is asked only about keys it has not priced, all of a chunk's at once in ascending
order (as :meth:`moesim.sim.stepcost.StepCoster._expert_rows_packed` asks): the same rows in the same
calls, the same floats. :func:`unique_rows` de-duplicates rows of slot counts for the uncompiled path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

try:  # optional: the [fast] extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

EMPTY = -1
"""Key of an empty table entry (packed counts are non-negative)."""


def _slot(key: int, mask: int) -> int:
    """Multiplicative hashing: bits 32.. of the product (int64 wrap-around in numba, the same bits
    in Python) spread the small packed keys over the table."""
    return ((int(key) * 0x5851F42D4C957F2D) >> 32) & mask


def _lookup_py(table_keys: np.ndarray, table_values: np.ndarray, keys: np.ndarray, out: np.ndarray) -> int:
    """``out[i]`` = the value of ``keys[i]`` (NaN if absent); returns how many were absent."""
    mask = table_keys.shape[0] - 1
    missing = 0
    for i in range(keys.shape[0]):
        k = keys[i]
        h = _slot(k, mask)
        while True:
            t = table_keys[h]
            if t == k:
                out[i] = table_values[h]
                break
            if t == EMPTY:
                out[i] = np.nan
                missing += 1
                break
            h = (h + 1) & mask
    return missing


def _insert_py(table_keys: np.ndarray, table_values: np.ndarray, keys: np.ndarray,
               values: np.ndarray) -> None:
    """Put distinct absent ``keys`` with ``values`` into the table (which has room)."""
    mask = table_keys.shape[0] - 1
    for i in range(keys.shape[0]):
        h = _slot(keys[i], mask)
        while table_keys[h] != EMPTY:
            h = (h + 1) & mask
        table_keys[h] = keys[i]
        table_values[h] = values[i]


if numba is not None:
    _slot = numba.njit(cache=True, nogil=True)(_slot)  # the kernels below call the compiled one
    _lookup = numba.njit(cache=True, nogil=True)(_lookup_py)
    _insert = numba.njit(cache=True, nogil=True)(_insert_py)
else:
    _lookup, _insert = _lookup_py, _insert_py


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows and the inverse (``uniq[inverse] == rows``). Rows of small non-negative integers
    that fit in 62 bits are packed into one int64 key and the keys hashed (``pandas.factorize``,
    first-appearance order, no sort); other rows (e.g. a micro-batch's fractional token counts) go
    through ``np.unique(axis=0)``."""
    j = rows.shape[1]
    if not np.issubdtype(rows.dtype, np.integer):
        uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
        return uniq, inverse.ravel()
    top = int(rows.max(initial=0))
    bits = max(1, top.bit_length())
    if j * bits > 62 or rows.min(initial=0) < 0:
        uniq, inverse = np.unique(rows, axis=0, return_inverse=True)
        return uniq, inverse.ravel()
    import pandas as pd

    shifts = (np.arange(j, dtype=np.int64) * bits)[None, :]
    keys = (rows.astype(np.int64) << shifts).sum(axis=1)
    inverse, uniq_keys = pd.factorize(keys, sort=False)
    uniq = (np.asarray(uniq_keys, dtype=np.int64)[:, None] >> shifts) & ((1 << bits) - 1)
    return uniq.astype(rows.dtype, copy=False), np.asarray(inverse, dtype=np.int64)


def compiled() -> bool:
    """Whether lookups run compiled (else one Python step per key: slower than a sort)."""
    return numba is not None


class KeyedTimes:
    """Seconds by packed key, filled on demand by ``price`` (ascending new keys -> their seconds)."""

    def __init__(self, price: Callable[[np.ndarray], np.ndarray], capacity: int = 1 << 12):
        self.price = price
        self.keys = np.full(capacity, EMPTY, dtype=np.int64)
        self.values = np.zeros(capacity)
        self.size = 0

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        """Seconds of every key of ``keys`` (any shape, int64)."""
        flat = np.ascontiguousarray(keys, dtype=np.int64).ravel()
        out = np.empty(flat.shape[0])
        if _lookup(self.keys, self.values, flat, out):
            absent = np.isnan(out)
            new = np.unique(flat[absent])
            fresh = np.asarray(self.price(new), dtype=float)
            self._add(new, fresh)
            _lookup(self.keys, self.values, flat, out)
        return out.reshape(keys.shape)

    def _add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if 2 * (self.size + len(keys)) > len(self.keys):  # keep the table at most half full
            cap = len(self.keys)
            while 2 * (self.size + len(keys)) > cap:
                cap *= 2
            used = self.keys != EMPTY
            old_keys, old_values = self.keys[used], self.values[used]
            self.keys, self.values = np.full(cap, EMPTY, dtype=np.int64), np.zeros(cap)
            _insert(self.keys, self.values, old_keys, old_values)
        _insert(self.keys, self.values, keys, values)
        self.size += len(keys)
