"""`fleetlearn demo`: the smallest honest federated loop over the embedded bus on one machine."""
