"""`fleetlearn demo`: the whole loop — real edge agents, bridge and trainer — on one machine."""
