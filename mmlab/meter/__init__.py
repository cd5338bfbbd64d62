"""Measure a candidate: parameters, MACs (fvcore, scan included), latency per device and runtime, cached."""

from mmlab._lazy import lazy_exports

__all__ = ["DEVICES", "RUNTIMES", "Counts", "MeasurementCache", "cached_counts", "cached_timing", "check_device",
           "check_runtime", "code_digest", "count", "count_model", "measure"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "DEVICES": "mmlab.meter.devices",
    "check_device": "mmlab.meter.devices",
    "RUNTIMES": "mmlab.meter.runtimes",
    "check_runtime": "mmlab.meter.runtimes",
    "MeasurementCache": "mmlab.meter.cache",
    "code_digest": "mmlab.meter.cache",
    "Counts": "mmlab.meter.macs",
    "count": "mmlab.meter.macs",
    "count_model": "mmlab.meter.macs",
    "cached_counts": "mmlab.meter.measure",
    "cached_timing": "mmlab.meter.measure",
    "measure": "mmlab.meter.measure",
})
