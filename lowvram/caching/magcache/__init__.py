"""MagCache for Wan2.1 and Wan2.2: the published magnitude ratios, the reference decisions, calibration."""
