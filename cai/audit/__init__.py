"""Judge audit: accuracy on known-better probes, then position, length, format, self-preference,
perturbations and calibration, each raw and as `--feedback` labels."""

from cai.audit.run import run_audit
from cai.audit.sections import SECTIONS

__all__ = ["SECTIONS", "run_audit"]
