# GPU trainers in one private subnet (one availability zone), in a cluster placement group when
# there are several, so DDP's all-reduce runs over the fastest network between them. Each gets
# a fixed private address: node 0 is the torchrun rendezvous point of the others.

data "aws_ami" "deep_learning" {
  count       = var.trainer_ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["amazon"]

  filter {
    name   = "name"
    values = ["Deep Learning OSS Nvidia Driver AMI GPU PyTorch * (Ubuntu 22.04) *"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }

  filter {
    name   = "state"
    values = ["available"]
  }
}

resource "aws_placement_group" "trainers" {
  count    = var.trainer_count > 1 ? 1 : 0
  name     = "${var.name}-trainers"
  strategy = "cluster"
}

resource "aws_instance" "trainer" {
  count                  = var.trainer_count
  ami                    = coalesce(var.trainer_ami_id, one(data.aws_ami.deep_learning[*].id))
  instance_type          = var.trainer_instance_type
  subnet_id              = aws_subnet.private[0].id
  private_ip             = local.trainer_ips[count.index]
  placement_group        = one(aws_placement_group.trainers[*].name)
  vpc_security_group_ids = [aws_security_group.trainers.id]
  iam_instance_profile   = aws_iam_instance_profile.trainer.name
  monitoring             = true

  user_data = templatefile("${path.module}/templates/trainer.sh.tftpl", {
    log_url     = local.kafka_url
    store_url   = local.store_url
    nnodes      = var.trainer_count
    node_rank   = count.index
    master_addr = local.trainer_ips[0]
  })

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.trainer_volume_size_gb
    encrypted   = true
  }

  tags = {
    Name = "${var.name}-trainer-${count.index}"
    Role = "trainer"
  }

  lifecycle {
    # A newer Deep Learning AMI must not replace a running trainer on the next apply.
    ignore_changes = [ami]
  }

  depends_on = [aws_ec2_subnet_cidr_reservation.fixed, aws_route_table_association.private]
}
