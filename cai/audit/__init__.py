"""Judge-bias audit: position, length, format, self-preference, perturbations, calibration."""

from cai.audit.run import SECTIONS, run_audit

__all__ = ["SECTIONS", "run_audit"]
