"""Token-action policy: a small causal LM that writes action chunks as text, in the VLAC template.

A chunk is written as ``"a0: -47 a1: 19 ; a0: ..."``. The template words are inserted by the code (forced
tokens); only the numbers are sampled, from logits restricted to the number tokens ``-R..R`` (temperature
applied after the restriction). So every output parses, out-of-range numbers are impossible, and a chunk's
log-prob is the sum of its number tokens' log-probs under that constrained distribution, the one actually
sampled from, which makes PPO ratios exact. Number ``n`` means ``center + scale * n / R`` inside the action
bounds; executed actions map back by rounding, so their log-probs can be recomputed exactly.

Observations enter as embedding vectors (one linear projection per key) after ``<bos>``; a linear value head
reads the final-norm hidden state at the last prompt position. ``save_pretrained`` writes a Hugging Face
model + tokenizer directory (loadable by other engines) plus the extra parts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fleetrl.extras import require
from fleetrl.models.configs import _NUMBER, SPECIALS, STEP_SEP, TokenLMConfig, _check_words  # noqa: F401
from fleetrl.robots.protocol import ArraySpec

if TYPE_CHECKING:  # transformers takes seconds to import: only processes that build a token policy pay it
    from transformers import LlamaConfig, PreTrainedTokenizerFast

EXTRAS_FILE = "token_policy_extras.safetensors"  # obs projections + value head
META_FILE = "token_policy.json"  # TokenLMConfig + what the weights' shapes and meaning depend on


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``words`` (id = position), split on whitespace only."""
    require("transformers", "token_lm policies")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


class TokenActionPolicy(nn.Module):
    """Same interface as GaussianChunkPolicy: act / log_prob / evaluate / entropy / value over chunks."""

    def __init__(
        self, cfg: TokenLMConfig, obs_spec: dict[str, ArraySpec], action_spec: ArraySpec, chunk_len: int
    ):
        super().__init__()
        require("transformers", "token_lm policies")  # before anything else: say which extra is missing
        low, high = action_spec.low, action_spec.high
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(
                f"token_lm maps numbers into the action bounds: needs finite low < high, got {low}, {high}"
            )
        self.cfg, self.chunk_len, self.action_shape = cfg, chunk_len, action_spec.shape
        self.obs_keys = list(obs_spec)
        self.center, self.scale, self.R = (high + low) / 2, (high - low) / 2, cfg.number_range
        names = cfg.dim_names or tuple(f"a{i}" for i in range(action_spec.size))
        if len(names) != action_spec.size:
            raise ValueError(f"dim_names has {len(names)} names but the action has {action_spec.size} dims")
        _check_words([f"{n}:" for n in names] + ([cfg.unit] if cfg.unit else []))
        step = [w for n in names for w in [f"{n}:", None] + ([cfg.unit] if cfg.unit else [])]
        self.words: list[str | None] = [w for h in range(chunk_len) for w in ([STEP_SEP] if h else []) + step]
        vocab = [*SPECIALS, *dict.fromkeys(w for w in self.words if w), *map(str, range(-self.R, self.R + 1))]
        self.tokenizer = build_tokenizer(vocab)
        token_id = {w: i for i, w in enumerate(vocab)}
        ids = [-1 if w is None else token_id[w] for w in self.words]
        self.register_buffer("template", torch.tensor(ids), persistent=False)  # -1 at number slots
        self.register_buffer("slots", (self.template < 0).nonzero().squeeze(-1), persistent=False)
        self._slots = self.slots.tolist()
        numbers = [token_id[str(n)] for n in range(-self.R, self.R + 1)]  # index i <-> integer i - R
        self.register_buffer("number_ids", torch.tensor(numbers), persistent=False)
        self.register_buffer("bos", torch.tensor([[token_id["<bos>"]]]), persistent=False)
        self.obs_scale = [1 / 255 if s.dtype == "uint8" else 1.0 for s in obs_spec.values()]
        self.prompt_len = 1 + len(self.obs_keys) * cfg.obs_tokens
        self.fingerprint = json.loads(json.dumps({
            **cfg.model_dump(include={"hidden_size", "layers", "heads", "intermediate_size", "number_range",
                                      "unit", "obs_tokens"}),
            "dim_names": names, "obs": {k: s.size for k, s in obs_spec.items()}, "action": action_spec.to_dict(),
        }))  # fmt: skip
        from safetensors.torch import load_file
        from transformers import LlamaForCausalLM

        if cfg.checkpoint is None:
            self.lm = LlamaForCausalLM(self._lm_config(len(vocab)))
        else:
            self._check_checkpoint(Path(cfg.checkpoint))
            self.lm = LlamaForCausalLM.from_pretrained(
                cfg.checkpoint, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
            )
        self.obs_proj = nn.ModuleList(
            nn.Linear(s.size, cfg.obs_tokens * cfg.hidden_size) for s in obs_spec.values()
        )
        self.value_head = nn.Linear(cfg.hidden_size, 1)
        if cfg.checkpoint is not None:
            extras = load_file(Path(cfg.checkpoint) / EXTRAS_FILE)
            self.load_state_dict(self.lm.state_dict(prefix="lm.") | extras)  # strict: extras must match
            if self.prompt_len + len(self.words) + 1 > self.lm.config.max_position_embeddings:
                raise ValueError(f"chunk_len={chunk_len} is too long for the checkpoint's max positions")

    def _lm_config(self, vocab_size: int) -> LlamaConfig:
        from transformers import LlamaConfig

        c = self.cfg
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.heads,
            max_position_embeddings=max(1024, self.prompt_len + len(self.words) + 1),
            pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, use_cache=False,
            attn_implementation="sdpa",
        )  # fmt: skip

    def _check_checkpoint(self, directory: Path) -> None:
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise ValueError(f"{directory} is not a token_lm checkpoint: {META_FILE} is missing")
        saved = json.loads(meta_path.read_text())["fingerprint"]
        diff = [
            f"{k}: saved {saved.get(k)!r}, now {v!r}"
            for k, v in self.fingerprint.items()
            if saved.get(k) != v
        ]
        if diff:
            raise ValueError(
                f"checkpoint {directory} is incompatible with this config/spec: " + "; ".join(diff)
            )

    # ---- tokens <-> actions ----
    def _to_index(self, actions: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Actions [B, H, *shape] -> number indices [B, H*D] in 0..2R (index i is the integer i - R)."""
        a = torch.as_tensor(actions, device=self.template.device).reshape(len(actions), -1).double()
        return (torch.round((a - self.center) / self.scale * self.R).clamp(-self.R, self.R) + self.R).long()

    def _to_actions(self, idx: torch.Tensor) -> torch.Tensor:
        a = self.center + self.scale * ((idx - self.R).double() / self.R)
        return a.float().reshape(len(idx), self.chunk_len, *self.action_shape)

    def render(self, actions: np.ndarray | torch.Tensor) -> list[str]:
        """Chunk [H, *shape] or chunks [B, H, *shape] -> template text (numbers rounded onto the grid)."""
        a = torch.as_tensor(actions)
        idx = self._to_index(a[None] if a.dim() == len(self.action_shape) + 1 else a).tolist()
        texts = []
        for row in idx:
            nums = iter(row)
            texts.append(" ".join(w if w is not None else str(next(nums) - self.R) for w in self.words))
        return texts

    def parse(self, text: str) -> np.ndarray:
        """Template text (optionally ending in <eos>) -> chunk [H, *shape]; ValueError if malformed."""
        words = text.split()
        if words and words[-1] == "<eos>":
            words.pop()
        if len(words) != len(self.words):
            raise ValueError(f"expected {len(self.words)} template words, got {len(words)} in {text!r}")
        nums = []
        for i, (got, want) in enumerate(zip(words, self.words, strict=True)):
            if want is None:
                if not _NUMBER.fullmatch(got) or abs(int(got)) > self.R:
                    raise ValueError(f"word {i} should be an integer in [-{self.R}, {self.R}], got {got!r}")
                nums.append(int(got) + self.R)
            elif got != want:
                raise ValueError(f"word {i} should be {want!r}, got {got!r}")
        return self._to_actions(torch.tensor([nums])).numpy()[0]

    # ---- model ----
    def _prompt(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[<bos> embedding, obs_tokens embeddings per key] -> [B, prompt_len, hidden]."""
        b = obs[self.obs_keys[0]].shape[0]
        parts = [self.lm.get_input_embeddings()(self.bos.expand(b, 1))]
        for key, proj, s in zip(self.obs_keys, self.obs_proj, self.obs_scale, strict=True):
            parts.append(proj(obs[key].reshape(b, -1).float() * s).reshape(b, self.cfg.obs_tokens, -1))
        return torch.cat(parts, dim=1)

    def _number_log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Constrained log-probs [..., 2R+1]: logits restricted to the number tokens, over temperature."""
        logits = self.lm.lm_head(hidden).float()[..., self.number_ids]
        return torch.log_softmax(logits / self.cfg.temperature, dim=-1)

    @torch.no_grad()
    def generate(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Completion token ids [B, T] (template with sampled numbers) and their log-prob [B].

        One prompt pass, then one cached pass per number, feeding it with the forced words that follow."""
        prompt = self._prompt(obs)
        b = prompt.shape[0]
        tokens = self.template.expand(b, -1).clone()
        embeds = torch.cat([prompt, self.lm.get_input_embeddings()(tokens[:, : self._slots[0]])], dim=1)
        out = self.lm.model(inputs_embeds=embeds, use_cache=True)
        log_prob = torch.zeros(b, device=prompt.device)
        for j, slot in enumerate(self._slots):
            logp = self._number_log_probs(out.last_hidden_state[:, -1])
            idx = logp.argmax(-1) if deterministic else torch.multinomial(logp.exp(), 1).squeeze(-1)
            log_prob += logp.gather(-1, idx[:, None]).squeeze(-1)
            tokens[:, slot] = self.number_ids[idx]
            if j + 1 < len(self._slots):
                fed = tokens[:, slot : self._slots[j + 1]]
                out = self.lm.model(input_ids=fed, past_key_values=out.past_key_values, use_cache=True)
        return tokens, log_prob

    def act(
        self, obs: dict[str, torch.Tensor], deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled chunks [B, H, *shape] float32 and their constrained log-probs [B] (no grad)."""
        tokens, log_prob = self.generate(obs, deterministic)
        return self._to_actions(tokens[:, self.slots] - self.number_ids[0]), log_prob

    def _teacher_forced(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass over prompt + template with ``actions``' numbers: log-probs [B, N, 2R+1], idx [B, N]."""
        idx = self._to_index(actions)
        tokens = self.template.expand(len(idx), -1).clone()
        tokens[:, self.slots] = self.number_ids[idx]
        forced = self.lm.get_input_embeddings()(tokens[:, : self._slots[-1]])
        hidden = self.lm.model(inputs_embeds=torch.cat([self._prompt(obs), forced], dim=1)).last_hidden_state
        return self._number_log_probs(hidden[:, self.prompt_len - 1 + self.slots]), idx

    def _number_mask(self, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if mask is None:
            return torch.ones_like(like)
        return mask.to(like.dtype).repeat_interleave(len(self._slots) // self.chunk_len, dim=1)

    def evaluate(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob [B], entropy [B]) of executed chunks; ``mask`` [B, H] leaves out unexecuted steps.

        The entropy sums the constrained categorical's entropy at each (kept) number position."""
        logp, idx = self._teacher_forced(obs, actions)
        m = self._number_mask(mask, logp[..., 0])
        token_logp = logp.gather(-1, idx[..., None]).squeeze(-1)
        return (token_logp * m).sum(-1), (-(logp.exp() * logp).sum(-1) * m).sum(-1)

    def log_prob(
        self, obs: dict[str, torch.Tensor], actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Log-prob [B] of executed chunks (one teacher-forced pass); ``mask`` [B, H] as in evaluate."""
        return self.evaluate(obs, actions, mask)[0]

    def entropy(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Estimate: per-position entropies along one sampled chunk (the chunk entropy has no closed form)."""
        return self.evaluate(obs, self.act(obs)[0])[1]

    def value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.lm.model(inputs_embeds=self._prompt(obs)).last_hidden_state[:, -1]
        return self.value_head(hidden).squeeze(-1).float()

    # ---- checkpoints ----
    def save_pretrained(self, directory: str | Path) -> None:
        """HF model + tokenizer files, the extra weights (safetensors) and the config JSON."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(d)
        self.tokenizer.save_pretrained(d)
        extras = {
            k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("lm.")
        }
        save_file(extras, d / EXTRAS_FILE)
        cfg = self.cfg.model_dump(mode="json", exclude={"checkpoint"})
        meta = {"config": cfg, "fingerprint": self.fingerprint, "chunk_len": self.chunk_len}
        (d / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def from_pretrained(cls, directory, obs_spec, action_spec, chunk_len) -> TokenActionPolicy:
        """Rebuild with the saved config (``TokenLMConfig(checkpoint=directory)`` with its other fields)."""
        cfg = json.loads((Path(directory) / META_FILE).read_text())["config"]
        return cls(TokenLMConfig(**cfg, checkpoint=str(directory)), obs_spec, action_spec, chunk_len)
