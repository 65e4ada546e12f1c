"""The pure core: model (the data between shell and core), config, policy, the hypervisor port, one tick."""
