# MQTT-to-Kafka bridges in the private subnets, spread over the availability zones. Several
# bridges share the device topics (MQTT 5 shared subscription); each keeps its own client id.

resource "aws_instance" "bridge" {
  count                  = var.bridge_count
  ami                    = data.aws_ssm_parameter.al2023.value
  instance_type          = var.bridge_instance_type
  subnet_id              = aws_subnet.private[count.index % var.az_count].id
  vpc_security_group_ids = [aws_security_group.bridge.id]
  iam_instance_profile   = aws_iam_instance_profile.bridge.name
  monitoring             = true

  user_data = templatefile("${path.module}/templates/bridge.sh.tftpl", {
    client_id = "fleetlearn-bridge-${count.index}"
    log_url   = local.kafka_url
    store_url = local.store_url
  })

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = 20
    encrypted   = true
  }

  tags = {
    Name = "${var.name}-bridge-${count.index}"
    Role = "bridge"
  }

  lifecycle {
    ignore_changes = [ami]
  }

  # user_data installs packages at first boot: through the NAT gateway.
  depends_on = [aws_route_table_association.private]
}
