"""bench/ddp.py's checkpoint comparison runs against the real S3 server and reports sane
figures (the throughput half is what test_ddp.py runs, under torchrun)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.ddp import checkpoint_io

pytestmark = pytest.mark.integration


def test_checkpoint_io_compares_the_same_bytes_both_ways(s3: Any) -> None:
    bucket = s3.new_bucket()
    figures = checkpoint_io(s3, bucket, state_mb=2, repeats=1)
    assert figures["bytes"] > 2 * (1 << 20)
    assert set(figures["seconds"]) == {"ours_save", "ours_load", "boto3_put", "boto3_get"}
    assert all(seconds > 0 for seconds in figures["seconds"].values())
    assert figures["save_ratio"] > 0
    assert figures["restore_ratio"] > 0
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert "ours/ddp/bench/00000001/state.pt" in keys
    assert "boto3/0.pt" in keys
