"""MQTT for devices and bridges: the paho-mqtt 2.x adapter and an embedded broker."""

from bus.mqtt.client import MqttClient, PublishHandle, connect_mqtt
from bus.mqtt.message import MqttMessage, Will
from bus.mqtt.options import MqttOptions

__all__ = ["MqttClient", "MqttMessage", "MqttOptions", "PublishHandle", "Will", "connect_mqtt"]
