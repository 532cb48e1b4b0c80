"""Facts about the machine and the TVM installation: threads, timing, targets, hardware facts
(CPU and GPU, one place), and the TVM shim (TVM itself is imported on first use)."""
