"""The admin commands beside the daemon: plan, restore, status, monitor, plot, simulate; they read the state file,
the timeline or one sample, never the running daemon's memory."""
