# Kafka, chosen by var.kafka_mode:
#
# msk           Amazon MSK across the private subnets: IAM authentication over TLS (port
#               9098; the clients' kafka_url says aws_iam=true), TLS between brokers, storage
#               encrypted with the store's KMS key, broker logs in CloudWatch. No
#               unauthenticated or plaintext listener.
# self_managed  One EC2 instance running Apache Kafka in KRaft mode (broker and controller in
#               one process), plaintext on 9092 inside the VPC; its security group admits the
#               bridges and the trainers only. For trials and small fleets: one node, no
#               replication.

resource "aws_cloudwatch_log_group" "msk" {
  count             = local.msk ? 1 : 0
  name              = "/aws/msk/${var.name}"
  retention_in_days = var.log_retention_days
}

resource "aws_msk_configuration" "this" {
  count          = local.msk ? 1 : 0
  name           = "${var.name}-kafka"
  kafka_versions = [var.msk_kafka_version]

  # The bridge and the trainer create their topics themselves (bus/log/kafka.py), with the
  # default replication_factor -1: default.replication.factor below is the one place that
  # sets their replicas (kafka_url does not override it), always above min.insync.replicas.
  server_properties = <<-EOT
    auto.create.topics.enable=false
    default.replication.factor=${local.msk_replication_factor}
    min.insync.replicas=${var.kafka_min_insync_replicas}
    num.partitions=6
    log.retention.hours=${var.kafka_retention_hours}
    unclean.leader.election.enable=false
  EOT
}

resource "aws_msk_cluster" "this" {
  count                  = local.msk ? 1 : 0
  cluster_name           = "${var.name}-kafka"
  kafka_version          = var.msk_kafka_version
  number_of_broker_nodes = local.msk_broker_count

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = aws_subnet.private[*].id
    security_groups = [aws_security_group.kafka.id]

    storage_info {
      ebs_storage_info {
        volume_size = var.kafka_volume_size_gb
      }
    }
  }

  client_authentication {
    unauthenticated = false

    sasl {
      iam = true
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = aws_kms_key.store.arn

    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this[0].arn
    revision = aws_msk_configuration.this[0].latest_revision
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.msk[0].name
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.kafka_min_insync_replicas < local.msk_replication_factor
      error_message = "kafka_min_insync_replicas must be below the replication factor (min(3, brokers)), or writes stop whenever one broker restarts."
    }
  }
}

resource "aws_instance" "kafka" {
  count                  = local.msk ? 0 : 1
  ami                    = data.aws_ssm_parameter.al2023.value
  instance_type          = var.self_managed_kafka_instance_type
  subnet_id              = aws_subnet.private[0].id
  private_ip             = local.self_managed_kafka_ip
  vpc_security_group_ids = [aws_security_group.kafka.id]
  iam_instance_profile   = aws_iam_instance_profile.operated.name
  monitoring             = true

  user_data = templatefile("${path.module}/templates/kafka.sh.tftpl", {
    kafka_version   = var.self_managed_kafka_version
    retention_hours = var.kafka_retention_hours
  })

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.kafka_volume_size_gb
    encrypted   = true
  }

  tags = {
    Name = "${var.name}-kafka"
    Role = "kafka"
  }

  lifecycle {
    # The log lives on the root volume: a newer AMI must not replace the instance.
    ignore_changes = [ami]
  }

  # user_data installs from the internet at first boot: through the NAT gateway.
  depends_on = [aws_ec2_subnet_cidr_reservation.fixed, aws_route_table_association.private]
}
