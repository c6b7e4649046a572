# General

variable "name" {
  description = "Name prefix of every resource (and of the default bucket name)."
  type        = string
  default     = "fleetlearn"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}[a-z0-9]$", var.name))
    error_message = "name must be 3 to 22 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Extra tags put on every resource (merged into the provider's default tags)."
  type        = map(string)
  default     = {}
}

# Network

variable "vpc_cidr" {
  description = "CIDR of the VPC this module creates; split into one public and one private subnet per availability zone."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && try(tonumber(split("/", var.vpc_cidr)[1]) <= 20, false)
    error_message = "vpc_cidr must be an IPv4 CIDR of /20 or larger."
  }
}

variable "az_count" {
  description = "Availability zones used: one private subnet each (MSK puts brokers_per_az brokers in every one)."
  type        = number
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 3 && floor(var.az_count) == var.az_count
    error_message = "az_count must be 2 or 3 (MSK needs at least two zones)."
  }
}

variable "device_cidrs" {
  description = "IPv4 CIDRs the devices connect from. Only MQTT over TLS (8883, and 8884 for mutual TLS) is opened to them; [\"0.0.0.0/0\"] for a fleet on the open internet."
  type        = list(string)

  validation {
    condition     = length(var.device_cidrs) > 0 && alltrue([for cidr in var.device_cidrs : can(cidrhost(cidr, 0)) && !strcontains(cidr, ":")])
    error_message = "device_cidrs must be a non-empty list of IPv4 CIDRs such as 203.0.113.0/24."
  }
}

# Object store

variable "bucket_name" {
  description = "Name of the S3 bucket; null: <name>-<account id>-<region>."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name (3 to 63 lowercase letters, digits, dots, hyphens)."
  }
}

variable "store_prefix" {
  description = "Key prefix of the store the trainer and the bridge share (store_url = s3://<bucket>/<store_prefix>)."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]*$", var.store_prefix))
    error_message = "store_prefix must be one path segment of lowercase letters, digits, dots, underscores or hyphens."
  }
}

variable "bucket_force_destroy" {
  description = "Let `terraform destroy` delete a bucket that still holds objects (checkpoints, models). Keep false in production."
  type        = bool
  default     = false
}

variable "checkpoint_noncurrent_days" {
  description = "Days a checkpoint object stays recoverable after the trainer deleted or replaced it (noncurrent version expiration under checkpoints/ and ddp/)."
  type        = number
  default     = 7

  validation {
    condition     = var.checkpoint_noncurrent_days >= 1
    error_message = "checkpoint_noncurrent_days must be at least 1."
  }
}

variable "checkpoint_transition_days" {
  description = "Days after which checkpoint objects move to STANDARD_IA (S3 requires at least 30)."
  type        = number
  default     = 30

  validation {
    condition     = var.checkpoint_transition_days >= 30
    error_message = "checkpoint_transition_days must be at least 30 (S3's minimum for STANDARD_IA)."
  }
}

variable "checkpoint_expiration_days" {
  description = "Days after which checkpoint objects expire; null: never. A trainer idle this long loses its resume point, so leave null unless old DDP records must go."
  type        = number
  default     = null

  validation {
    condition     = var.checkpoint_expiration_days == null || try(var.checkpoint_expiration_days > 30, false)
    error_message = "checkpoint_expiration_days must be null or more than 30 (after the STANDARD_IA transition)."
  }
}

variable "claim_expiration_days" {
  description = "Days the bridge's claim-check objects (large device messages) are kept. Keep it above the Kafka retention: a replay from Kafka needs them."
  type        = number
  default     = 14

  validation {
    condition     = var.claim_expiration_days >= 1
    error_message = "claim_expiration_days must be at least 1."
  }
}

variable "noncurrent_version_days" {
  description = "Days any other overwritten or deleted object (models, registry) stays recoverable."
  type        = number
  default     = 90

  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which the parts of an unfinished multipart upload are deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_days >= 1
    error_message = "abort_incomplete_multipart_days must be at least 1."
  }
}

# Kafka

variable "kafka_mode" {
  description = "\"msk\": Amazon MSK with IAM authentication over TLS; \"self_managed\": one EC2 instance running Apache Kafka in KRaft mode (plaintext inside the VPC)."
  type        = string
  default     = "msk"

  validation {
    condition     = contains(["msk", "self_managed"], var.kafka_mode)
    error_message = "kafka_mode must be \"msk\" or \"self_managed\"."
  }
}

variable "kafka_topic_prefix" {
  description = "Prefix of the fleetlearn topics (fleetlearn.updates, ...); the IAM policies grant access to these topics only."
  type        = string
  default     = "fleetlearn."

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]+$", var.kafka_topic_prefix))
    error_message = "kafka_topic_prefix may hold letters, digits, dots, underscores and hyphens only."
  }
}

variable "kafka_retention_hours" {
  description = "How long Kafka keeps records (log.retention.hours)."
  type        = number
  default     = 168

  validation {
    condition     = var.kafka_retention_hours >= 1
    error_message = "kafka_retention_hours must be at least 1."
  }
}

variable "kafka_volume_size_gb" {
  description = "Storage per Kafka broker in GiB (MSK EBS volume, or the self-managed instance's data volume)."
  type        = number
  default     = 100

  validation {
    condition     = var.kafka_volume_size_gb >= 10
    error_message = "kafka_volume_size_gb must be at least 10."
  }
}

variable "msk_kafka_version" {
  description = "Apache Kafka version of the MSK cluster."
  type        = string
  default     = "3.8.x"
}

variable "msk_instance_type" {
  description = "MSK broker instance type (kafka.t3.small is enough for a trial; kafka.m7g.large and up for production)."
  type        = string
  default     = "kafka.m7g.large"

  validation {
    condition     = startswith(var.msk_instance_type, "kafka.")
    error_message = "msk_instance_type must be an MSK broker type such as kafka.m7g.large."
  }
}

variable "msk_brokers_per_az" {
  description = "MSK brokers in each availability zone."
  type        = number
  default     = 1

  validation {
    condition     = var.msk_brokers_per_az >= 1 && floor(var.msk_brokers_per_az) == var.msk_brokers_per_az
    error_message = "msk_brokers_per_az must be a whole number of at least 1."
  }
}

variable "kafka_min_insync_replicas" {
  description = "min.insync.replicas of the MSK cluster: replicas that must confirm a write (acks=all) before it counts."
  type        = number
  default     = 2

  validation {
    condition     = var.kafka_min_insync_replicas >= 1
    error_message = "kafka_min_insync_replicas must be at least 1."
  }
}

variable "self_managed_kafka_version" {
  description = "Apache Kafka release the self-managed instance downloads (the one infra/kafka/pom.xml resolves)."
  type        = string
  default     = "4.1.1"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.self_managed_kafka_version))
    error_message = "self_managed_kafka_version must look like 4.1.1."
  }
}

variable "self_managed_kafka_instance_type" {
  description = "EC2 instance type of the self-managed Kafka node."
  type        = string
  default     = "m7i.large"
}

# Mosquitto broker

variable "broker_instance_type" {
  description = "EC2 instance type of the Mosquitto broker."
  type        = string
  default     = "t3.small"
}

variable "broker_hostname" {
  description = "DNS name devices use for the broker (an A record on the Elastic IP, also in the broker's certificate); null: the Elastic IP itself."
  type        = string
  default     = null
}

variable "enable_mtls_listener" {
  description = "Open 8884, the listener that requires client certificates (mutual TLS), to the devices as well as 8883."
  type        = bool
  default     = true
}

# Bridge

variable "bridge_instance_type" {
  description = "EC2 instance type of the MQTT-to-Kafka bridges."
  type        = string
  default     = "t3.small"
}

variable "bridge_count" {
  description = "Number of bridges (they share the device topics through an MQTT 5 shared subscription)."
  type        = number
  default     = 1

  validation {
    condition     = var.bridge_count >= 0 && floor(var.bridge_count) == var.bridge_count
    error_message = "bridge_count must be a whole number of at least 0."
  }
}

# Trainers

variable "trainer_instance_type" {
  description = "GPU instance type of the trainers (g5, g6, p4d, p5 ...)."
  type        = string
  default     = "g5.xlarge"

  validation {
    condition     = can(regex("^(g[4-9]|p[3-9])[a-z]*\\.[0-9a-z]+$", var.trainer_instance_type))
    error_message = "trainer_instance_type must be a GPU instance type of the g4 to g9 or p3 to p9 families."
  }
}

variable "trainer_count" {
  description = "Number of GPU trainer instances (DDP nodes); 0 leaves the GPU tier out."
  type        = number
  default     = 1

  validation {
    condition     = var.trainer_count >= 0 && var.trainer_count <= 50 && floor(var.trainer_count) == var.trainer_count
    error_message = "trainer_count must be a whole number from 0 to 50 (the fixed-address range holds 56)."
  }
}

variable "trainer_ami_id" {
  description = "AMI of the trainers; null: the newest AWS Deep Learning AMI (PyTorch, Ubuntu 22.04, NVIDIA driver)."
  type        = string
  default     = null
}

variable "trainer_volume_size_gb" {
  description = "Root volume of each trainer in GiB (the Deep Learning AMI alone needs about 75)."
  type        = number
  default     = 200

  validation {
    condition     = var.trainer_volume_size_gb >= 100
    error_message = "trainer_volume_size_gb must be at least 100."
  }
}

# Operations

variable "log_retention_days" {
  description = "Retention of the CloudWatch log group that receives the MSK broker logs."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the retention periods CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ...)."
  }
}
