"""The daemon: file events, readiness, the main loop, systemd notification."""
