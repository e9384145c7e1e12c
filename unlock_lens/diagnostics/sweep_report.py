from unlock_lens.sweep.report import write_sweep_report  # noqa: F401 - temporary shim, not committed
