"""Pure state machines that turn events into verdicts: the scan detector and the block policy.

Nothing here does I/O or reads a clock: ``now`` is always an argument. See
:mod:`netwarden.detect.scan` and :mod:`netwarden.detect.policy`, and docs/detection.md.
"""
