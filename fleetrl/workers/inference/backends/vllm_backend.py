"""The vLLM backend: a ``token_lm`` policy's language model served by a vLLM engine on a GPU.

Why: vLLM is what a deployment of a large token-action policy uses for fast generation. Its numerics
(bf16, fused kernels, its own sampler) differ from the learner's fp32 torch, so its log-probs are reported
but never trusted for the PPO ratio (VLAC §3.2.1); the learner recomputes them.

How, per batch:
* the observation part of the prompt (``<bos>`` + projected observation embeddings) and every forced
  template word are embeddings computed by the torch copy of the policy, passed as ``prompt_embeds``;
* the numbers are decoded one template slot at a time for the whole batch, each with
  ``allowed_token_ids`` = the number tokens, so the output always parses and out-of-range numbers are
  impossible; with ``logprobs_mode="processed_logprobs"`` the reported log-prob of a sampled number is the
  constrained (renormalised) one the sampler used, and a chunk's log-prob is the sum over its numbers;
* new weights go into the running engine (``LLM.apply_model`` + ``load_weights``; no restart), the
  observation projections into the torch copy.

vLLM is an optional extra (``pip install fleetrl[vllm]``), imported only when this backend is built.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from fleetrl.models.policies import build_policy
from fleetrl.robots.protocol import ArraySpec
from fleetrl.workers.weights import to_numpy_state


class VLLMBackend:
    def __init__(
        self,
        policy,
        observation_spec: dict[str, ArraySpec],
        action_spec: ArraySpec,
        chunk_len: int,
        threads: int = 1,
        seed: int = 0,
        keep_versions: int = 1,
        gpu_memory_utilization: float = 0.2,
    ):
        if policy.family != "token_lm":
            raise ValueError(f"the vllm backend serves token_lm policies, not {policy.family!r}")
        if keep_versions > 1:
            raise ValueError("the vllm backend serves one weight version: use inference.reload: batch")
        if not torch.cuda.is_available():
            raise RuntimeError("the vllm backend needs a GPU (set inference.num_gpus > 0 on a GPU node)")
        os.environ.setdefault(
            "VLLM_ENABLE_V1_MULTIPROCESSING", "0"
        )  # the engine in this process: apply_model
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError("the vllm backend needs vLLM: pip install 'fleetrl[vllm]'") from exc
        self._vllm = vllm
        torch.set_num_threads(threads)
        self.policy = build_policy(policy, observation_spec, action_spec, chunk_len).eval().cuda()
        self._dir = tempfile.TemporaryDirectory(prefix="fleetrl-vllm-")
        self.policy.save_pretrained(self._dir.name)
        try:
            self.llm = vllm.LLM(
                model=self._dir.name,
                tokenizer=self._dir.name,
                dtype="bfloat16",
                seed=seed,
                enable_prompt_embeds=True,
                logprobs_mode="processed_logprobs",
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=True,
            )
        except TypeError as exc:  # an engine without prompt embeds or processed log-probs
            raise RuntimeError(
                f"this vLLM is too old for the token_lm backend (needs >= 0.10.2): {exc}"
            ) from exc
        self.number_ids = self.policy.number_ids.tolist()
        self.version = 0

    def hold(self, versions: dict[int, dict | None]) -> list[int]:
        """One engine serves one version: canary rollout, rollback and evaluation of another version need
        the torch backends."""
        if set(versions) - {self.version}:
            raise ValueError(
                "the vllm backend serves one weight version: use the torch backend for canary rollout, "
                "rollback and evaluation of older versions"
            )
        return [self.version]

    def kept_versions(self) -> list[int]:
        return [self.version]

    @torch.inference_mode()
    def infer(
        self,
        batch: dict[str, np.ndarray],
        pins: np.ndarray | None = None,
        deterministic: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        obs = {k: torch.from_numpy(np.asarray(v)).cuda() for k, v in batch.items()}
        policy = self.policy
        embed = policy.lm.get_input_embeddings()
        prompt = policy._prompt(obs)
        n = prompt.shape[0]
        tokens = policy.template.expand(n, -1).clone()
        log_prob = torch.zeros(n, dtype=torch.float64)
        params = self._vllm.SamplingParams(
            max_tokens=1, temperature=policy.cfg.temperature, logprobs=0, allowed_token_ids=self.number_ids
        )
        for slot in policy._slots:  # every row has the same template: one engine call per number slot
            embeds = torch.cat([prompt, embed(tokens[:, :slot])], dim=1).to(torch.bfloat16).cpu()
            outputs = self.llm.generate([{"prompt_embeds": e} for e in embeds], params, use_tqdm=False)
            for i, out in enumerate(outputs):
                completion = out.outputs[0]
                token = completion.token_ids[0]
                tokens[i, slot] = token
                log_prob[i] += completion.logprobs[0][token].logprob
        actions = policy._to_actions(tokens[:, policy.slots] - policy.number_ids[0])
        versions = np.full(n, self.version, dtype=np.int64)
        return actions.cpu().numpy(), log_prob.float().numpy(), versions

    def served_state(self) -> dict[str, np.ndarray]:
        return to_numpy_state(self.policy.state_dict())

    def prepare(self, state_dict: dict, version: int) -> tuple[dict, int]:
        return state_dict, version  # the engine takes weights in place: nothing to build beforehand

    def install(self, prepared: tuple[dict, int]) -> None:
        self.load_weights(*prepared)

    def load_weights(self, state_dict: dict, version: int) -> None:
        if version <= self.version:
            return
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}
        self.policy.load_state_dict(state)
        lm_weights = [(k.removeprefix("lm."), v) for k, v in state.items() if k.startswith("lm.")]
        self.llm.apply_model(lambda model: model.load_weights(iter(lm_weights)))
        self.llm.reset_prefix_cache()
        self.version = version
