"""What the fleet trains: architectures by name, real data sets, parameters as wire tensors, export."""
