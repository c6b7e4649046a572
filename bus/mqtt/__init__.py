"""MQTT for devices and bridges: the paho-mqtt 2.x adapter and an embedded broker."""

from bus.mqtt.client import MqttClient, MqttMessage, PublishHandle, Will, connect_mqtt
from bus.mqtt.options import MqttOptions

__all__ = ["MqttClient", "MqttMessage", "MqttOptions", "PublishHandle", "Will", "connect_mqtt"]
