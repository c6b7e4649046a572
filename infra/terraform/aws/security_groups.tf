# Security groups. From the internet only MQTT over TLS reaches the broker, and only from
# var.device_cidrs: 8883 (username and password over TLS) and 8884 (client certificates).
# No SSH anywhere: operators use SSM Session Manager. Kafka is reachable from the bridges and
# the trainers only. Rules are separate resources (one per rule), as the AWS provider advises.

resource "aws_security_group" "broker" {
  name_prefix = "${var.name}-broker-"
  description = "Mosquitto broker: MQTT over TLS from the devices and the bridges"
  vpc_id      = aws_vpc.this.id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "bridge" {
  name_prefix = "${var.name}-bridge-"
  description = "MQTT-to-Kafka bridges: no inbound traffic"
  vpc_id      = aws_vpc.this.id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "kafka" {
  name_prefix = "${var.name}-kafka-"
  description = "Kafka (MSK or self-managed): from the bridges and the trainers only"
  vpc_id      = aws_vpc.this.id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group" "trainers" {
  name_prefix = "${var.name}-trainers-"
  description = "GPU trainers: DDP traffic between trainers only"
  vpc_id      = aws_vpc.this.id

  lifecycle {
    create_before_destroy = true
  }
}

# Broker

resource "aws_vpc_security_group_ingress_rule" "broker_mqtts_devices" {
  for_each          = toset(var.device_cidrs)
  security_group_id = aws_security_group.broker.id
  description       = "MQTT over TLS from devices"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 8883
  to_port           = 8883
}

resource "aws_vpc_security_group_ingress_rule" "broker_mqtts_mtls_devices" {
  for_each          = var.enable_mtls_listener ? toset(var.device_cidrs) : toset([])
  security_group_id = aws_security_group.broker.id
  description       = "MQTT over mutual TLS (client certificates) from devices"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 8884
  to_port           = 8884
}

resource "aws_vpc_security_group_ingress_rule" "broker_mqtts_bridge" {
  security_group_id            = aws_security_group.broker.id
  description                  = "MQTT over TLS from the bridges"
  referenced_security_group_id = aws_security_group.bridge.id
  ip_protocol                  = "tcp"
  from_port                    = 8883
  to_port                      = 8883
}

resource "aws_vpc_security_group_egress_rule" "broker_http" {
  for_each          = toset(["80", "443"])
  security_group_id = aws_security_group.broker.id
  description       = "Package repositories (apt) and SSM"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
}

# Bridges

resource "aws_vpc_security_group_egress_rule" "bridge_https" {
  security_group_id = aws_security_group.bridge.id
  description       = "S3, SSM and package repositories (dnf) over HTTPS"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "bridge_kafka" {
  security_group_id            = aws_security_group.bridge.id
  description                  = "Kafka"
  referenced_security_group_id = aws_security_group.kafka.id
  ip_protocol                  = "tcp"
  from_port                    = local.kafka_port
  to_port                      = local.kafka_port
}

resource "aws_vpc_security_group_egress_rule" "bridge_mqtts" {
  security_group_id            = aws_security_group.bridge.id
  description                  = "The Mosquitto broker"
  referenced_security_group_id = aws_security_group.broker.id
  ip_protocol                  = "tcp"
  from_port                    = 8883
  to_port                      = 8883
}

# Kafka

resource "aws_vpc_security_group_ingress_rule" "kafka_from_bridge" {
  security_group_id            = aws_security_group.kafka.id
  description                  = "Kafka clients: the bridges"
  referenced_security_group_id = aws_security_group.bridge.id
  ip_protocol                  = "tcp"
  from_port                    = local.kafka_port
  to_port                      = local.kafka_port
}

resource "aws_vpc_security_group_ingress_rule" "kafka_from_trainers" {
  security_group_id            = aws_security_group.kafka.id
  description                  = "Kafka clients: the trainers"
  referenced_security_group_id = aws_security_group.trainers.id
  ip_protocol                  = "tcp"
  from_port                    = local.kafka_port
  to_port                      = local.kafka_port
}

resource "aws_vpc_security_group_egress_rule" "kafka_https" {
  security_group_id = aws_security_group.kafka.id
  description       = "Self-managed node: the Kafka download, dnf and SSM over HTTPS"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# Trainers

resource "aws_vpc_security_group_ingress_rule" "trainers_ddp" {
  security_group_id            = aws_security_group.trainers.id
  description                  = "DDP between trainers: torchrun rendezvous and NCCL/gloo sockets"
  referenced_security_group_id = aws_security_group.trainers.id
  ip_protocol                  = "tcp"
  from_port                    = 1024
  to_port                      = 65535
}

resource "aws_vpc_security_group_egress_rule" "trainers_ddp" {
  security_group_id            = aws_security_group.trainers.id
  description                  = "DDP between trainers"
  referenced_security_group_id = aws_security_group.trainers.id
  ip_protocol                  = "tcp"
  from_port                    = 1024
  to_port                      = 65535
}

resource "aws_vpc_security_group_egress_rule" "trainers_http" {
  for_each          = toset(["80", "443"])
  security_group_id = aws_security_group.trainers.id
  description       = "S3, SSM and package repositories (apt, pip)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = tonumber(each.value)
  to_port           = tonumber(each.value)
}

resource "aws_vpc_security_group_egress_rule" "trainers_kafka" {
  security_group_id            = aws_security_group.trainers.id
  description                  = "Kafka"
  referenced_security_group_id = aws_security_group.kafka.id
  ip_protocol                  = "tcp"
  from_port                    = local.kafka_port
  to_port                      = local.kafka_port
}
