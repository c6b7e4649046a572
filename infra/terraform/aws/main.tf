locals {
  azs = slice(data.aws_availability_zones.available.names, 0, var.az_count)
  msk = var.kafka_mode == "msk"

  account_id  = data.aws_caller_identity.current.account_id
  partition   = data.aws_partition.current.partition
  bucket_name = coalesce(var.bucket_name, "${var.name}-${local.account_id}-${var.region}")

  # Fixed private addresses, known before the instances exist: the Kafka URL can then be
  # written into the bridges' and trainers' environment, and every DDP node knows node 0.
  # They come from the second quarter of the first private subnet, reserved (network.tf) so
  # that AWS never hands them to anything else.
  fixed_cidr            = cidrsubnet(aws_subnet.private[0].cidr_block, 2, 1)
  self_managed_kafka_ip = cidrhost(local.fixed_cidr, 4)
  trainer_ips           = [for i in range(var.trainer_count) : cidrhost(local.fixed_cidr, 8 + i)]

  msk_broker_count       = var.az_count * var.msk_brokers_per_az
  msk_replication_factor = min(3, local.msk_broker_count)

  # MSK with IAM authentication listens on 9098 (TLS); the self-managed node on 9092.
  # aws_iam=true makes the clients sign SASL/OAUTHBEARER tokens with their instance role
  # (bus/log/kafka_config.py). Neither URL sets replication_factor: topics take the brokers'
  # default.replication.factor (msk: kafka.tf's configuration; self_managed: Kafka's default, 1).
  kafka_port = local.msk ? 9098 : 9092
  kafka_bootstrap = (
    local.msk
    ? join(",", aws_msk_cluster.this[*].bootstrap_brokers_sasl_iam)
    : "${local.self_managed_kafka_ip}:9092"
  )
  kafka_url = (
    local.msk
    ? "kafka://${local.kafka_bootstrap}?security_protocol=sasl_ssl&aws_iam=true&aws_region=${var.region}"
    : "kafka://${local.kafka_bootstrap}"
  )

  store_url = "s3://${aws_s3_bucket.store.bucket}/${var.store_prefix}?region=${var.region}"

  broker_host = coalesce(var.broker_hostname, aws_eip.broker.public_ip)

  # The topics of ARCHITECTURE.md, under the configurable prefix.
  topics = {
    updates  = "${var.kafka_topic_prefix}updates"
    data     = "${var.kafka_topic_prefix}data"
    status   = "${var.kafka_topic_prefix}status"
    rounds   = "${var.kafka_topic_prefix}rounds"
    releases = "${var.kafka_topic_prefix}releases"
    dlq      = "${var.kafka_topic_prefix}dlq"
    seeds    = "${var.kafka_topic_prefix}seeds"
  }

  # Consumer groups named in the code: bus/bridge/downlink.py for the bridge;
  # cloud_trainer/service.py, cloud_trainer/ddp/job.py and bus/log/kafka.py (the end-offset
  # reader) for the trainer.
  bridge_groups  = ["fleetlearn-bridge-downlink"]
  trainer_groups = ["fleetlearn-trainer-*", "fleetlearn-ddp-*", "fleetlearn-watermarks"]
}

data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

data "aws_ssm_parameter" "ubuntu" {
  name = "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
}
