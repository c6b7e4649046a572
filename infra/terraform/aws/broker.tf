# The Mosquitto broker devices connect to: Ubuntu 24.04 (Mosquitto 2.0 from its archive) in a
# public subnet behind an Elastic IP, so devices keep one address across instance replacement.
# Its security group admits 8883 and 8884 from var.device_cidrs and 8883 from the bridges;
# the TLS certificate, password file and ACL are placed by the operator (see README.md).

resource "aws_instance" "broker" {
  ami                    = data.aws_ssm_parameter.ubuntu.value
  instance_type          = var.broker_instance_type
  subnet_id              = aws_subnet.public[0].id
  vpc_security_group_ids = [aws_security_group.broker.id]
  iam_instance_profile   = aws_iam_instance_profile.operated.name
  monitoring             = true

  user_data = templatefile("${path.module}/templates/broker.sh.tftpl", {
    mtls = var.enable_mtls_listener
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
    Name = "${var.name}-broker"
    Role = "mqtt-broker"
  }

  lifecycle {
    # A newer AMI must not replace the broker (and its persisted sessions) on the next apply.
    ignore_changes = [ami]
  }

  depends_on = [aws_route_table_association.public]
}

resource "aws_eip" "broker" {
  domain = "vpc"

  tags = {
    Name = "${var.name}-broker"
  }

  depends_on = [aws_internet_gateway.this]
}

resource "aws_eip_association" "broker" {
  instance_id   = aws_instance.broker.id
  allocation_id = aws_eip.broker.id
}
