"""BatchNorm's running statistics are averaged, not stepped or sparsified: an adaptive server
step would move a variance by about server_lr whatever its scale, and top-k error feedback
drove one negative (bench/convergence.py on the motion data)."""

from __future__ import annotations

import numpy as np

from bus.protocol import CodecName, CodecSpec, decode_delta, encode_delta, is_statistic
from cloud_trainer.strategies import StrategyConfig, build_strategy


def test_statistics_are_named_by_torchs_buffer_names() -> None:
    assert is_statistic("features.1.running_var")
    assert is_statistic("bn.running_mean")
    assert not is_statistic("features.1.weight")
    assert not is_statistic("running_variance")


def test_top_k_sends_statistics_dense_as_int8_and_keeps_no_residual_for_them() -> None:
    delta = {
        "conv.weight": np.linspace(-1, 1, 100, dtype=np.float32),
        "bn.running_var": np.linspace(0.1, 0.5, 8, dtype=np.float32),
    }
    codec = CodecSpec(name=CodecName.TOPK, topk_ratio=0.05)
    encoded = encode_delta(delta, codec)
    assert set(encoded.tensors) == {"#topk"}
    assert encoded.residual is not None
    assert set(encoded.residual) == {"conv.weight"}
    decoded = decode_delta(encoded.tensors, codec, encoded.manifest)
    step = float(encoded.tensors["#topk"][4:8].view("<f4")[0])  # the second tensor's scale
    assert step == np.float32(0.5 / 127)
    assert encoded.tensors["#topk"][8 + 5 :][:8].view(np.int8).tolist() == [
        round(v / step) for v in delta["bn.running_var"]
    ]  # after 5 kept values of the weight, all 8 of the statistic
    np.testing.assert_allclose(decoded["bn.running_var"], delta["bn.running_var"], atol=step / 2)
    assert np.count_nonzero(decoded["conv.weight"]) == 5


def test_adaptive_and_scaled_server_steps_apply_the_mean_of_statistics_as_it_is() -> None:
    model = {
        "w": np.zeros(4, np.float32),
        "bn.running_var": np.ones(4, np.float32),
    }
    delta = {"w": np.full(4, 1e-4, np.float32), "bn.running_var": np.full(4, -0.5, np.float32)}
    for config in (
        StrategyConfig(name="fedadam", server_lr=0.1),
        StrategyConfig(name="fedavg", server_lr=0.5),
    ):
        optimizer = build_strategy(config).optimizer
        stepped, state = optimizer.step(model, delta, {})
        np.testing.assert_allclose(stepped["bn.running_var"], 0.5)
        assert not any("running_var" in key for key in state)
    adam, _ = build_strategy(StrategyConfig(name="fedadam", server_lr=0.1)).optimizer.step(
        model, delta, {}
    )
    assert adam["w"][0] > 5 * delta["w"][0]  # the weights do take the adaptive step
