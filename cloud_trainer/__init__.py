"""cloud_trainer."""
