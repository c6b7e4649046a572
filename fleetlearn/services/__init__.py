"""fleetlearn/services."""
