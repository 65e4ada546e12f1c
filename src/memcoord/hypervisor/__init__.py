"""The libvirt adapter of the hypervisor port (`memcoord.core.port`): the real one (libvirt.py), dry run's view
over any adapter (dry_run.py), and the per-domain settings read from libvirt definitions (domain_settings.py)."""
