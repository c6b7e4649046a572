# What the fleetlearn configs need. README.md maps every output to its config key.

output "bucket_name" {
  description = "The S3 bucket of the object store."
  value       = aws_s3_bucket.store.bucket
}

output "store_url" {
  description = "store_url of trainer.yaml, ddp.yaml and bridge.yaml (the bridge and the trainer must share it: claim checks are resolved against it)."
  value       = local.store_url
}

output "kafka_url" {
  description = "log_url of bridge.yaml, trainer.yaml and ddp.yaml; on MSK it authenticates with the instance role (aws_iam=true, aws_region)."
  value       = local.kafka_url
}

output "kafka_bootstrap_brokers" {
  description = "Kafka bootstrap servers (host:port, comma-separated), for Kafka's own tools."
  value       = local.kafka_bootstrap
}

output "msk_cluster_arn" {
  description = "ARN of the MSK cluster; null in self_managed mode."
  value       = one(aws_msk_cluster.this[*].arn)
}

output "kafka_instance_id" {
  description = "Instance id of the self-managed Kafka node (for SSM sessions); null in msk mode."
  value       = one(aws_instance.kafka[*].id)
}

output "broker_public_ip" {
  description = "The broker's Elastic IP (point broker_hostname's DNS record at it)."
  value       = aws_eip.broker.public_ip
}

output "broker_mqtt_url" {
  description = "mqtt_url of the devices (device.yaml): MQTT over TLS, username and password."
  value       = "mqtts://${local.broker_host}:8883"
}

output "broker_mqtt_mtls_url" {
  description = "mqtt_url of devices that authenticate with a client certificate; null when enable_mtls_listener is false."
  value       = var.enable_mtls_listener ? "mqtts://${local.broker_host}:8884" : null
}

output "broker_private_mqtt_url" {
  description = "mqtt_url of bridge.yaml (add the bridge's credentials and its keepalive/session options): the broker's private name."
  value       = "mqtts://${aws_instance.broker.private_dns}:8883"
}

output "broker_instance_id" {
  description = "Instance id of the Mosquitto broker (for SSM sessions)."
  value       = aws_instance.broker.id
}

output "bridge_instance_ids" {
  description = "Instance ids of the bridges, in client id order (fleetlearn-bridge-0, -1, ...)."
  value       = aws_instance.bridge[*].id
}

output "trainer_instance_ids" {
  description = "Instance ids of the GPU trainers, in DDP node rank order."
  value       = aws_instance.trainer[*].id
}

output "trainer_private_ips" {
  description = "Private addresses of the trainers; the first is torchrun's rendezvous point."
  value       = local.trainer_ips
}

output "kms_key_arn" {
  description = "KMS key that encrypts the bucket and MSK's storage."
  value       = aws_kms_key.store.arn
}

output "vpc_id" {
  description = "The VPC this module created."
  value       = aws_vpc.this.id
}

output "private_subnet_ids" {
  description = "Private subnets (Kafka, bridges, trainers), one per availability zone."
  value       = aws_subnet.private[*].id
}
