"""fleetlearn."""
