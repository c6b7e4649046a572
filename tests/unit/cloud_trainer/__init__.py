"""Unit tests of cloud_trainer."""
