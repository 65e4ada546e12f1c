"""The simulated host and what runs on it: guests with workloads and balloon latency (host.py, workloads.py),
scenario files (scenario.py), runs of the daemon's own loop on them (run.py) and their reports (report.py)."""
