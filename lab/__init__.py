"""memcoord's guest lab: tiny real QEMU guests with a virtio balloon, memory hogs, a recorded timeline.

Used by `make demo` (lab.demo) and the acceptance suite (tests/e2e); see README "Lab and demo".
Modules: image (build the guest), lab (boot/teardown, console control, hogs), console (serial
channel), timeline (recorder, CSV/JSON/PNG), coordinator (`memcoord run` subprocess), session
(lab + memcoord + recorder as one unit), analysis (questions asked of a timeline), demo.
"""
