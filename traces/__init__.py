"""Shipped routing traces (data); a package only so that they install with moesim."""
