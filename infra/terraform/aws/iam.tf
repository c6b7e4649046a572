# One role per kind of instance, each with only what that service does:
#
# trainer  objects under <store_prefix>/ (checkpoints, releases, registry, claim checks to
#          resolve); Kafka: read updates, status and data, write rounds, releases and the
#          dead-letter topic, read and write seeds (the DDP job writes them, the trainer reads
#          them), its own consumer groups.
# bridge   claim checks only (<store_prefix>/claims/); Kafka: write updates, data, status and
#          the dead-letter topic, read rounds and releases, its downlink group.
# broker   and the self-managed Kafka node: Session Manager only.
#
# Resource "*" appears once, for the ssmmessages actions of Session Manager: they have no
# resource-level permissions (AWS's service authorization reference lists none). The trainer's
# s3:ListBucket is granted on the bucket without a prefix condition: S3 answers a HEAD on a
# missing key with 404 only to a caller that may list the bucket (403 otherwise), and the
# trainer tells "no checkpoint yet" from an error by that 404. The bucket holds fleetlearn's
# objects only; listing shows key names, never contents.

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# Session Manager (no SSH): the minimum the SSM agent needs for interactive sessions.
data "aws_iam_policy_document" "session_manager" {
  statement {
    sid       = "RegisterInstance"
    actions   = ["ssm:UpdateInstanceInformation"]
    resources = ["arn:${local.partition}:ec2:${var.region}:${local.account_id}:instance/*"]
  }

  statement {
    sid = "SessionChannels"
    actions = [
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_policy" "session_manager" {
  name_prefix = "${var.name}-session-manager-"
  description = "SSM Session Manager access for ${var.name} instances (instead of SSH)"
  policy      = data.aws_iam_policy_document.session_manager.json
}

# Trainer

data "aws_iam_policy_document" "trainer" {
  statement {
    sid       = "StoreObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.store.arn}/${var.store_prefix}/*"]
  }

  statement {
    sid       = "StoreList"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.store.arn]
  }

  statement {
    sid       = "StoreKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.store.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid       = "KafkaCluster"
      actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"]
      resources = [statement.value.arn]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid       = "KafkaTopics"
      actions   = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic"]
      resources = ["${replace(statement.value.arn, ":cluster/", ":topic/")}/${var.kafka_topic_prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid     = "KafkaRead"
      actions = ["kafka-cluster:ReadData"]
      resources = [
        for topic in [local.topics.updates, local.topics.status, local.topics.data, local.topics.seeds] :
        "${replace(statement.value.arn, ":cluster/", ":topic/")}/${topic}"
      ]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid     = "KafkaWrite"
      actions = ["kafka-cluster:WriteData"]
      resources = [
        for topic in [local.topics.rounds, local.topics.releases, local.topics.dlq, local.topics.seeds] :
        "${replace(statement.value.arn, ":cluster/", ":topic/")}/${topic}"
      ]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid     = "KafkaGroups"
      actions = ["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"]
      resources = [
        for group in local.trainer_groups :
        "${replace(statement.value.arn, ":cluster/", ":group/")}/${group}"
      ]
    }
  }
}

resource "aws_iam_role" "trainer" {
  name_prefix        = "${var.name}-trainer-"
  description        = "fleetlearn GPU trainers"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy" "trainer" {
  name   = "fleetlearn-trainer"
  role   = aws_iam_role.trainer.id
  policy = data.aws_iam_policy_document.trainer.json
}

resource "aws_iam_role_policy_attachment" "trainer_session_manager" {
  role       = aws_iam_role.trainer.name
  policy_arn = aws_iam_policy.session_manager.arn
}

resource "aws_iam_instance_profile" "trainer" {
  name_prefix = "${var.name}-trainer-"
  role        = aws_iam_role.trainer.name
}

# Bridge

data "aws_iam_policy_document" "bridge" {
  # put_claim uploads (multipart above 8 MiB) and then HEADs the object for its ETag.
  statement {
    sid       = "ClaimChecks"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.store.arn}/${var.store_prefix}/claims/*"]
  }

  statement {
    sid       = "StoreKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.store.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid       = "KafkaCluster"
      actions   = ["kafka-cluster:Connect", "kafka-cluster:DescribeCluster", "kafka-cluster:WriteDataIdempotently"]
      resources = [statement.value.arn]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid       = "KafkaTopics"
      actions   = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic"]
      resources = ["${replace(statement.value.arn, ":cluster/", ":topic/")}/${var.kafka_topic_prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid     = "KafkaWrite"
      actions = ["kafka-cluster:WriteData"]
      resources = [
        for topic in [local.topics.updates, local.topics.data, local.topics.status, local.topics.dlq] :
        "${replace(statement.value.arn, ":cluster/", ":topic/")}/${topic}"
      ]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid     = "KafkaRead"
      actions = ["kafka-cluster:ReadData"]
      resources = [
        for topic in [local.topics.rounds, local.topics.releases] :
        "${replace(statement.value.arn, ":cluster/", ":topic/")}/${topic}"
      ]
    }
  }

  dynamic "statement" {
    for_each = aws_msk_cluster.this

    content {
      sid     = "KafkaGroups"
      actions = ["kafka-cluster:AlterGroup", "kafka-cluster:DescribeGroup"]
      resources = [
        for group in local.bridge_groups :
        "${replace(statement.value.arn, ":cluster/", ":group/")}/${group}"
      ]
    }
  }
}

resource "aws_iam_role" "bridge" {
  name_prefix        = "${var.name}-bridge-"
  description        = "fleetlearn MQTT-to-Kafka bridges"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy" "bridge" {
  name   = "fleetlearn-bridge"
  role   = aws_iam_role.bridge.id
  policy = data.aws_iam_policy_document.bridge.json
}

resource "aws_iam_role_policy_attachment" "bridge_session_manager" {
  role       = aws_iam_role.bridge.name
  policy_arn = aws_iam_policy.session_manager.arn
}

resource "aws_iam_instance_profile" "bridge" {
  name_prefix = "${var.name}-bridge-"
  role        = aws_iam_role.bridge.name
}

# Broker and self-managed Kafka: operators' access only.

resource "aws_iam_role" "operated" {
  name_prefix        = "${var.name}-operated-"
  description        = "fleetlearn broker and self-managed Kafka: Session Manager only"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

resource "aws_iam_role_policy_attachment" "operated_session_manager" {
  role       = aws_iam_role.operated.name
  policy_arn = aws_iam_policy.session_manager.arn
}

resource "aws_iam_instance_profile" "operated" {
  name_prefix = "${var.name}-operated-"
  role        = aws_iam_role.operated.name
}
