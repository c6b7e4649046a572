"""Distributed training on the fleet's data stream: `torchrun` DDP, Kafka partitions as shards,
checkpoints in the object store that make a restart resume exactly where the last one ended."""
