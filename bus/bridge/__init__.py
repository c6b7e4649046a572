"""The MQTT ⇄ log bridge: device traffic into the log, rounds and releases back to devices."""
