"""What the fleet trains: architectures by name, real data, parameters as wire tensors, export."""
