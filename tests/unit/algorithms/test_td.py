"""The TD maths AWR and QAM/DIVL share (td.py), each against a direct hand computation of the variant its
algorithm computed on its own before: ALOE's one-chunk target and pessimistic minimum (AWR), LWD's n-step
chunk target, clipped double Q and critic loss (DIVL/QAM), and the Polyak step of their target networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fleetrl.algorithms.td import (
    conservative_penalty,
    ensemble_td_loss,
    n_step_chunk_target,
    observed_return_target,
    pessimistic_q,
    polyak_update,
)

torch.set_num_threads(1)


def random_rows(b: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "reward": torch.randn(b, generator=g),
        "discount": 0.9 ** torch.randint(1, 5, (b,), generator=g).float(),  # gamma^h, short chunks too
        "done": torch.rand(b, generator=g) < 0.3,
        "next_q": 10 * torch.randn(b, generator=g),
    }


def test_pessimistic_q_is_the_minimum_over_the_ensemble():
    q = torch.tensor([[1.0, 5.0, -2.0], [3.0, 4.0, -1.0], [2.0, 6.0, -3.0]])  # K = 3, B = 3
    assert torch.equal(pessimistic_q(q), torch.tensor([1.0, 4.0, -3.0]))
    pair = torch.randn(2, 12, generator=torch.Generator().manual_seed(1))  # LWD's clipped double Q, K = 2
    assert torch.equal(pessimistic_q(pair), torch.minimum(pair[0], pair[1]))


def test_ensemble_td_loss_averages_heads_and_rows_and_leaves_the_target_alone():
    q = torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)  # K = 2, B = 2
    y = torch.tensor([1.0, 4.0], requires_grad=True)
    loss = ensemble_td_loss(q, y)
    assert loss.item() == pytest.approx((0.0 + 4.0 + 4.0 + 1.0) / 4)
    loss.backward()
    assert y.grad is None
    torch.testing.assert_close(q.grad, 2 * (q.detach() - y.detach()) / 4)


def test_one_chunk_target_is_aloe_eq7_as_awr_computed_it():
    # AWR's q_chunk_target: chunk_reward + not_done * discount * next_q, [B] each, not_done = 1 - done
    rows = random_rows()
    r, d, done, q = rows["reward"], rows["discount"], rows["done"], rows["next_q"]
    not_done = 1.0 - done.float()
    assert torch.equal(n_step_chunk_target(r, d, done.float(), q), r + not_done * d * q)
    assert torch.equal(n_step_chunk_target(r, d, done, q), r + not_done * d * q)  # bool dones too
    rewards, discounts, dones = (
        torch.tensor([1.0, 2.0]),
        torch.tensor([0.729, 0.81]),
        torch.tensor([1.0, 0.0]),
    )
    y = n_step_chunk_target(rewards, discounts, dones, torch.tensor([10.0, -5.0]))
    torch.testing.assert_close(y, torch.tensor([1.0, 2.0 - 0.81 * 5.0]))


def test_one_chunk_target_as_qam_called_it_equals_the_row_form():
    # QAM passed [B, 1] columns with dones = 1 - not_done; a ChunkBatch row is one chunk, so n = 1
    rows = random_rows(seed=2)
    r, d, done, q = rows["reward"], rows["discount"], rows["done"].float(), rows["next_q"]
    not_done = 1.0 - done
    column = n_step_chunk_target(r[:, None], d[:, None], (1.0 - not_done)[:, None], q)
    assert torch.equal(column, n_step_chunk_target(r, d, done, q))
    assert torch.equal(column, r + d * (1.0 - done) * q)


def test_n_step_target_is_lwd_eq19_truncated_at_the_terminal_chunk():
    # DIVL's n_step_chunk_target over n = 3 chunks: row 0 bootstraps, row 1 terminates in chunk 1, row 2
    # in chunk 0; chunk discounts differ per chunk (a short final chunk)
    r = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [-1.0, 5.0, 5.0]])
    d = torch.tensor([[0.5, 0.25, 0.125], [0.5, 0.5, 0.5], [0.9, 0.9, 0.9]])
    dones = torch.tensor([[False, False, False], [False, True, False], [True, False, False]])
    boot = torch.tensor([-8.0, 100.0, 100.0])
    y = n_step_chunk_target(r, d, dones, boot)
    hand = [
        1.0 + 0.5 * 2.0 + 0.5 * 0.25 * 3.0 + 0.5 * 0.25 * 0.125 * -8.0,
        1.0 + 0.5 * 2.0,
        -1.0,
    ]
    assert y.tolist() == pytest.approx(hand)
    for i in range(3):  # the same as the loop written out per row
        acc, scale = 0.0, 1.0
        for k in range(3):
            acc += scale * r[i, k].item()
            scale *= d[i, k].item() * (0.0 if dones[i, k] else 1.0)
        assert y[i].item() == pytest.approx(acc + scale * boot[i].item())


def test_polyak_update_moves_parameters_by_tau_and_copies_buffers():
    src, tgt = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        src.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        src.running_mean.copy_(torch.tensor([4.0, 5.0, 6.0]))
    before = tgt.weight.detach().clone()
    polyak_update(tgt, src, 0.1)
    torch.testing.assert_close(tgt.weight.detach(), 0.9 * before + 0.1 * src.weight.detach())
    assert torch.equal(tgt.running_mean, src.running_mean)


def test_observed_return_target_raises_to_the_observed_return_where_known():
    y = torch.tensor([-10.0, -10.0, -10.0])
    g = torch.tensor([-4.0, -30.0, float("nan")])  # return higher, lower, not observed
    torch.testing.assert_close(observed_return_target(y, g, "mc_bound"), torch.tensor([-4.0, -10.0, -10.0]))
    # 'return' mode: the critic regresses the observed return itself, TD only where none was observed
    torch.testing.assert_close(observed_return_target(y, g, "return"), torch.tensor([-4.0, -30.0, -10.0]))


def test_conservative_penalty_is_cql_logsumexp_minus_data_and_pushes_the_right_way():
    g = torch.Generator().manual_seed(4)
    q_prop = torch.randn(2, 5, 3, generator=g).requires_grad_(True)  # K = 2 heads, M = 5 proposals, B = 3
    q_data = torch.randn(2, 3, generator=g).requires_grad_(True)
    direct = (
        sum(
            math.log(sum(math.exp(float(q_prop[k, m, b])) for m in range(5))) - float(q_data[k, b])
            for k in range(2)
            for b in range(3)
        )
        / 6
    )
    penalty = conservative_penalty(q_prop, q_data)
    assert math.isclose(float(penalty), direct, rel_tol=1e-5)
    penalty.backward()
    # minimising it lowers every proposal's Q (most the highest: softmax weights) and raises the data's
    torch.testing.assert_close(q_data.grad, torch.full((2, 3), -1 / 6))
    torch.testing.assert_close(q_prop.grad, torch.softmax(q_prop.detach(), dim=1) / 6)
