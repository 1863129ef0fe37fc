"""Token-action policy: template round trip, constrained decoding, exact log-probs, checkpoints, bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fleetrl.models.token_policy import TokenActionPolicy, TokenLMConfig
from fleetrl.robots.protocol import ArraySpec

OBS_SPEC = {"state": ArraySpec((3,)), "img": ArraySpec((2, 2, 3), "uint8")}
ACTION_SPEC = ArraySpec((2,), low=-2.0, high=3.0)  # asymmetric: center 0.5, scale 2.5
H, D = 3, 2
TINY = dict(hidden_size=16, layers=1, heads=2, intermediate_size=32, number_range=5)


def make(seed: int = 0, **overrides) -> TokenActionPolicy:
    cfg = TokenLMConfig(**(TINY | overrides))
    torch.manual_seed(cfg.seed + seed)
    return TokenActionPolicy(cfg, OBS_SPEC, ACTION_SPEC, H)


def make_obs(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (b, 2, 2, 3), generator=g, dtype=torch.uint8)
    return {"state": torch.randn(b, 3, generator=g), "img": img}


def direct_prompt(p: TokenActionPolicy, obs) -> list[torch.Tensor]:
    """Reference prompt: the <bos> embedding, then each key's projection (uint8 scaled by 1/255)."""
    b = obs["state"].shape[0]
    prompt = [p.lm.get_input_embeddings()(torch.full((b, 1), p.tokenizer.bos_token_id))]
    for key, proj, scale in zip(OBS_SPEC, p.obs_proj, (1.0, 1 / 255), strict=True):
        prompt.append(proj(obs[key].reshape(b, -1).float() * scale).reshape(b, p.cfg.obs_tokens, -1))
    return prompt


def direct_number_log_probs(p: TokenActionPolicy, obs, tokens: torch.Tensor) -> torch.Tensor:
    """Slow reference: per number position, a fresh no-cache LM pass over everything before it; full-vocab
    logits with non-number ids set to -inf, over temperature. Returns log-probs [B, N, 2R+1]."""
    prompt = direct_prompt(p, obs)
    is_number = torch.zeros(len(p.tokenizer), dtype=torch.bool)
    is_number[p.number_ids] = True
    out = []
    for slot in (p.template < 0).nonzero().squeeze(-1).tolist():
        embeds = torch.cat([*prompt, p.lm.get_input_embeddings()(tokens[:, :slot])], 1)
        logits = p.lm(inputs_embeds=embeds).logits[:, -1]
        logp = torch.log_softmax(logits.masked_fill(~is_number, -torch.inf) / p.cfg.temperature, -1)
        out.append(logp[:, p.number_ids])
    return torch.stack(out, 1)


def test_template_round_trip_and_malformed_text():
    p = make(dim_names=("x", "z"), unit="mm")
    n = torch.randint(-5, 6, (H, D))
    chunk = 0.5 + 2.5 * n.double() / 5
    (text,) = p.render(chunk.numpy())
    assert text.startswith(f"x: {n[0, 0]} mm z: {n[0, 1]} mm ; x: ")
    np.testing.assert_allclose(p.parse(text), chunk.numpy(), atol=1e-6)
    assert p.parse(text + " <eos>").shape == (H, D)
    assert p.render(p.parse(text)) == [text]
    ids = p.tokenizer(text, add_special_tokens=False).input_ids
    assert p.tokenizer.unk_token_id not in ids and len(ids) == len(text.split())
    bad = {
        text.replace("x:", "y:", 1): "should be 'x:'",
        text.replace(f"x: {n[0, 0]}", "x: 6", 1): "integer in",
        text.replace(f"x: {n[0, 0]}", "x: 1.5", 1): "integer in",
        text.rsplit(" ", 1)[0]: "template words",
        text + " ;": "template words",
    }
    for malformed, message in bad.items():
        with pytest.raises(ValueError, match=message):
            p.parse(malformed)


def test_constrained_decoding_always_parses_and_stays_in_range():
    p = make(temperature=5.0)
    obs = make_obs(256)
    torch.manual_seed(1)
    actions, _ = p.act(obs)
    torch.manual_seed(1)
    tokens, _ = p.generate(obs)
    slots = p.template < 0
    assert torch.isin(tokens[:, slots], p.number_ids).all()
    assert (tokens[:, ~slots] == p.template[~slots]).all()
    texts = [p.tokenizer.decode(row) for row in tokens]
    assert texts == p.render(actions)
    numbers = {int(w) for t in texts for w in t.split() if w.lstrip("-").isdigit()}
    assert numbers == set(range(-5, 6))  # every number reachable, none outside [-R, R]
    parsed = np.stack([p.parse(t) for t in texts])
    np.testing.assert_array_equal(parsed, actions.numpy())
    assert actions.dtype == torch.float32 and actions.shape == (256, H, D)
    assert (actions >= -2.0).all() and (actions <= 3.0).all()


def test_log_prob_matches_teacher_forcing_and_direct_computation():
    p = make(temperature=2.0)
    obs = make_obs(6)
    tokens, gen_logp = p.generate(obs)
    actions, act_logp = p.act(obs)
    with torch.no_grad():
        ref = direct_number_log_probs(p, obs, tokens).gather(
            -1, (tokens[:, p.template < 0] - p.number_ids[0])[..., None]
        )
        torch.testing.assert_close(gen_logp, ref.squeeze(-1).sum(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(p.log_prob(obs, actions), act_logp, atol=1e-5, rtol=0)
    assert (act_logp > -H * D * np.log(11) * 3).all() and (act_logp < 0).all()


def test_mask_leaves_out_unexecuted_steps():
    p = make()
    obs = make_obs(4)
    actions, _ = p.act(obs)
    mask = torch.ones(4, H, dtype=torch.bool)
    mask[::2, -1] = False
    with torch.no_grad():
        idx = p._to_index(actions)
        tokens = p.template.expand(4, -1).clone()
        tokens[:, p.template < 0] = p.number_ids[idx]
        per_token = direct_number_log_probs(p, obs, tokens).gather(-1, idx[..., None]).squeeze(-1)
        expected = torch.where(mask.repeat_interleave(D, 1), per_token, 0).sum(-1)
        torch.testing.assert_close(p.log_prob(obs, actions, mask), expected, atol=1e-5, rtol=0)
        assert not torch.allclose(expected, per_token.sum(-1))


def test_value_and_entropy():
    p = make()
    obs = make_obs(5)
    v = p.value(obs)
    assert v.shape == (5,) and v.dtype == torch.float32 and v.std() > 1e-3
    actions, _ = p.act(obs)
    with (
        torch.no_grad()
    ):  # the final-norm hidden state at the last prompt position, even with the chunk after it
        embeds = torch.cat([*direct_prompt(p, obs), p.lm.get_input_embeddings()(p.generate(obs)[0])], 1)
        hidden = p.lm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(
            v, p.value_head(hidden[:, p.prompt_len - 1]).squeeze(-1), atol=1e-5, rtol=0
        )
    logp, ent = p.evaluate(obs, actions)
    with torch.no_grad():
        idx = p._to_index(actions)
        tokens = p.template.expand(5, -1).clone()
        tokens[:, p.template < 0] = p.number_ids[idx]
        ref = direct_number_log_probs(p, obs, tokens)
    torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1).sum(-1), atol=1e-5, rtol=0)
    assert (ent > 0).all() and (ent <= H * D * np.log(11) + 1e-5).all()
    (logp.sum() + p.entropy(obs).sum() + v.sum()).backward()
    assert p.lm.lm_head.weight.grad.abs().sum() > 0 and p.obs_proj[1].weight.grad.abs().sum() > 0


def test_state_dict_save_and_reload(tmp_path):
    p = make()
    assert all(isinstance(v, torch.Tensor) for v in p.state_dict().values())
    assert all(
        torch.equal(a, b) for a, b in zip(p.state_dict().values(), make().state_dict().values(), strict=True)
    )
    obs = make_obs(4)
    actions, _ = p.act(obs)
    with torch.no_grad():
        logp, value = p.log_prob(obs, actions), p.value(obs)
    fresh = make(seed=7)
    fresh.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in p.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(fresh.log_prob(obs, actions), logp) and torch.equal(fresh.value(obs), value)

    p.save_pretrained(tmp_path)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "token_policy.json"):
        assert (tmp_path / name).is_file()
    loaded = TokenActionPolicy(TokenLMConfig(**TINY, checkpoint=str(tmp_path)), OBS_SPEC, ACTION_SPEC, H)
    again = TokenActionPolicy.from_pretrained(tmp_path, OBS_SPEC, ACTION_SPEC, H)
    with torch.no_grad():
        for q in (loaded, again):
            assert torch.equal(q.log_prob(obs, actions), logp) and torch.equal(q.value(obs), value)
    from transformers import AutoTokenizer

    (text,) = p.render(actions[0])
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == p.tokenizer(text).input_ids
    with pytest.raises(ValueError, match="incompatible.*number_range"):
        TokenActionPolicy(
            TokenLMConfig(**TINY | {"number_range": 6}, checkpoint=str(tmp_path)), OBS_SPEC, ACTION_SPEC, H
        )
    with pytest.raises(ValueError, match="not a token_lm checkpoint"):
        TokenActionPolicy(TokenLMConfig(**TINY, checkpoint=str(tmp_path / "nope")), OBS_SPEC, ACTION_SPEC, H)


def test_bf16_autocast_act_returns_float32():
    p = make(hidden_size=32, number_range=50)
    obs = make_obs(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actions, logp = p.act(obs)
        value = p.value(obs)
    assert actions.dtype == logp.dtype == value.dtype == torch.float32
    assert actions.shape == (16, H, D) and logp.shape == value.shape == (16,)
    assert torch.isfinite(logp).all() and torch.isfinite(value).all()
    with torch.no_grad():
        diff = (logp - p.log_prob(obs, actions)).abs().max()
    assert 0 < diff < 0.5


def test_invalid_configs_and_specs():
    with pytest.raises(ValueError, match="heads"):
        TokenLMConfig(hidden_size=16, heads=3)
    with pytest.raises(ValueError, match="template word"):
        TokenLMConfig(unit="7")
    with pytest.raises(ValueError, match="finite"):
        TokenActionPolicy(TokenLMConfig(**TINY), OBS_SPEC, ArraySpec((2,)), H)
    with pytest.raises(ValueError, match="dim_names"):
        TokenActionPolicy(TokenLMConfig(**TINY, dim_names=("x",)), OBS_SPEC, ACTION_SPEC, H)
