"""Measured kernel and copy times (calibration tables) that the cost model interpolates."""

from moesim.calibration.format import OPS, SCHEMA, Table, read_table, write_table
from moesim.calibration.tables import Calibration, Lookup, load_calibration

__all__ = ["OPS", "SCHEMA", "Calibration", "Lookup", "Table", "load_calibration", "read_table", "write_table"]
