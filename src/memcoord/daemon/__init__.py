"""The daemon shell: the loop, signals and reload (service.py), connecting to a hypervisor, sd_notify, the journal,
and the published view (observe.py: state file, metrics, timeline)."""
