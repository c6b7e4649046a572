# The object store: checkpoints, releases, the model registry and the bridge's claim checks.
#
# Encryption: SSE-KMS with a customer-managed key (rotated yearly) and S3 Bucket Keys. Unlike
# SSE-S3 (AES256), reading an object then needs kms:Decrypt on this key too, so the key policy
# and the roles' grants are a second, audited (CloudTrail) gate in front of the data. The bucket
# key keeps the KMS request cost to a few calls per object burst. The same key encrypts MSK's
# storage.

resource "aws_kms_key" "store" {
  description             = "${var.name}: object store and Kafka encryption at rest"
  deletion_window_in_days = 30
  enable_key_rotation     = true
}

resource "aws_kms_alias" "store" {
  name          = "alias/${var.name}-store"
  target_key_id = aws_kms_key.store.key_id
}

resource "aws_s3_bucket" "store" {
  bucket        = local.bucket_name
  force_destroy = var.bucket_force_destroy
}

resource "aws_s3_bucket_ownership_controls" "store" {
  bucket = aws_s3_bucket.store.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "store" {
  bucket                  = aws_s3_bucket.store.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "store" {
  bucket = aws_s3_bucket.store.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "store" {
  bucket = aws_s3_bucket.store.id

  rule {
    bucket_key_enabled = true

    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.store.arn
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "store" {
  bucket = aws_s3_bucket.store.id

  # The trainer deletes checkpoints beyond `checkpoints_kept` itself; versioning keeps the
  # deleted ones as noncurrent versions for a few days, then they go for good. The current
  # checkpoint never expires by age unless checkpoint_expiration_days is set.
  rule {
    id     = "checkpoints"
    status = "Enabled"

    filter {
      prefix = "${var.store_prefix}/checkpoints/"
    }

    transition {
      days          = var.checkpoint_transition_days
      storage_class = "STANDARD_IA"
    }

    noncurrent_version_expiration {
      noncurrent_days = var.checkpoint_noncurrent_days
    }

    dynamic "expiration" {
      for_each = var.checkpoint_expiration_days == null ? [] : [var.checkpoint_expiration_days]

      content {
        days = expiration.value
      }
    }
  }

  # DDP checkpoints (ddp/{job}/): model states and the per-rank records kept for audit.
  rule {
    id     = "ddp-checkpoints"
    status = "Enabled"

    filter {
      prefix = "${var.store_prefix}/ddp/"
    }

    transition {
      days          = var.checkpoint_transition_days
      storage_class = "STANDARD_IA"
    }

    noncurrent_version_expiration {
      noncurrent_days = var.checkpoint_noncurrent_days
    }

    dynamic "expiration" {
      for_each = var.checkpoint_expiration_days == null ? [] : [var.checkpoint_expiration_days]

      content {
        days = expiration.value
      }
    }
  }

  # Claim checks are needed until the trainer has read them, or replays them from Kafka.
  rule {
    id     = "claims"
    status = "Enabled"

    filter {
      prefix = "${var.store_prefix}/claims/"
    }

    expiration {
      days = var.claim_expiration_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 1
    }
  }

  # Everything: overwritten or deleted objects stay recoverable for a while, expired delete
  # markers and the parts of abandoned multipart uploads are cleaned up.
  rule {
    id     = "all-objects"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  depends_on = [aws_s3_bucket_versioning.store]

  lifecycle {
    precondition {
      condition     = var.checkpoint_expiration_days == null || try(var.checkpoint_expiration_days > var.checkpoint_transition_days, false)
      error_message = "checkpoint_expiration_days must be later than checkpoint_transition_days."
    }
  }
}

data "aws_iam_policy_document" "store_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.store.arn, "${aws_s3_bucket.store.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "DenyOutdatedTls"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.store.arn, "${aws_s3_bucket.store.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "store" {
  bucket = aws_s3_bucket.store.id
  policy = data.aws_iam_policy_document.store_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.store]
}
