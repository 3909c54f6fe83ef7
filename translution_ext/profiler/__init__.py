"""Measurement for ``python -m translution_ext bench``, the demo and the bench/ scripts."""
from .measure import PeakMemory, device_name, timed

__all__ = ["PeakMemory", "device_name", "timed"]
