"""Fixtures of the fault suite (defined in faultkit.py, which the tests import helpers from)."""

from faultkit import fault_model, no_write_prefix  # noqa: F401
