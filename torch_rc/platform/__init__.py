"""Facts about the machine torch_rc runs on: threads, targets, hardware (no TVM import)."""
