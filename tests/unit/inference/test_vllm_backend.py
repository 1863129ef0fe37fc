"""The vLLM backend on a real engine. Runs only where vLLM and a GPU are present; elsewhere it is skipped
with that reason (nothing here fakes vLLM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed (optional extra: pip install 'fleetrl[vllm]')"
)
if not torch.cuda.is_available():
    pytest.skip("the vllm backend needs a GPU", allow_module_level=True)

from fleetrl.models.token_policy import TokenLMConfig  # noqa: E402
from fleetrl.robots.protocol import ArraySpec  # noqa: E402
from fleetrl.workers.inference.backends import build_backend  # noqa: E402

OBS = {"state": ArraySpec((6,), "float32")}
ACT = ArraySpec((2,), "float32", -1.0, 1.0)


def test_vllm_backend_generates_parseable_chunks_with_log_probs_close_to_fp32_and_takes_new_weights():
    cfg = TokenLMConfig(number_range=20, temperature=2.0)
    backend = build_backend("vllm", policy=cfg, observation_spec=OBS, action_spec=ACT, chunk_len=3)
    obs = {"state": np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)}
    actions, log_probs, versions = backend.infer(obs)
    assert actions.shape == (16, 3, 2) and (versions == 0).all()
    policy = backend.policy
    for text in policy.render(actions):
        np.testing.assert_allclose(policy.parse(text), policy.parse(text))  # parses
    assert (np.abs(actions) <= 1).all() and np.isfinite(log_probs).all()
    with torch.no_grad():
        fp32 = policy.float().log_prob(
            {"state": torch.from_numpy(obs["state"]).cuda()}, torch.from_numpy(actions)
        )
    gap = np.abs(log_probs - fp32.cpu().numpy())
    assert gap.mean() < 0.5  # bf16 engine vs fp32 torch: close, not equal
    state = {k: (v + 0.05 * torch.randn_like(v)).cpu().numpy() for k, v in policy.state_dict().items()}
    backend.load_weights(state, 1)
    _, log_probs_after, versions = backend.infer(obs)
    assert (versions == 1).all() and not np.allclose(log_probs_after, log_probs)
