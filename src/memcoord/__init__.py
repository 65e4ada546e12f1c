"""memcoord: a memory coordinator for KVM hosts, moving guest memory with the virtio balloon through libvirt."""

__version__ = "0.3.0"
