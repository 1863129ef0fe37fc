"""Gradients averaged across the workers of a multi-worker learner (algorithms/data_parallel.py), in two
real processes of a gloo group: the averaged step equals one step on both workers' batches together,
a worker with nothing to learn from still takes the others' step, and BC on different batches per worker
keeps the two workers' weights identical."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fleetrl.algorithms.base import PolicySpec, build_algorithm, clipped_step, idle_step
from fleetrl.algorithms.batch import ChunkBatch
from fleetrl.algorithms.data_parallel import average_gradients, world_size
from fleetrl.models.flow import FlowChunkConfig
from fleetrl.models.policies import build_policy
from fleetrl.robots.protocol import ArraySpec
from fleetrl.testing.net import free_port
from fleetrl.workers.learning.worker_group import WorkerGroup, weights_checksum


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(16, 3, generator=g), torch.randn(16, 1, generator=g)


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = {"world": world_size()}
    # 1. one averaged step == one step on the mean of both workers' losses (what DDP computes)
    model = net()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data(rank)
    clipped_step(((model(x) - y) ** 2).mean(), optim, list(model.parameters()), 1e9)
    results["averaged"] = [p.detach().clone() for p in model.parameters()]
    # 2. a worker with nothing to learn from (rank 1) steps with rank 0's gradient alone
    model = net()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    if rank == 0:
        clipped_step(((model(x) - y) ** 2).mean(), optim, list(model.parameters()), 1e9)
        results["idle_stepped"] = True
    else:
        results["idle_stepped"] = idle_step(optim, list(model.parameters()), 1e9)
    results["one_sided"] = [p.detach().clone() for p in model.parameters()]
    # ... and when no worker has anything, nobody steps
    results["none_stepped"] = average_gradients(list(model.parameters()), contributes=False)
    # 3. BC on different batches per worker: the weights stay identical, and differ from the start
    spec = {"state": ArraySpec((4,))}
    action = ArraySpec((2,), "float32", -1.0, 1.0)
    policy = build_policy(FlowChunkConfig(hidden=(16,), flow_steps=2, seed=0), spec, action, 3)
    torch.manual_seed(rank)  # the algorithms' own draws (flow noise) differ per worker, as in a learner
    bc = build_algorithm("bc", {"batch_size": 8}, policy, PolicySpec(spec, action, 3, 0.99), "flow_chunk")
    start = weights_checksum(policy)
    rng = np.random.default_rng(rank)
    for _ in range(5):
        b = 8
        obs = {"state": rng.normal(size=(b, 4)).astype(np.float32)}
        batch = ChunkBatch(
            obs=obs, actions=rng.uniform(-1, 1, (b, 3, 2)).astype(np.float32),
            rewards=np.zeros((b, 3), np.float32), chunk_reward=np.zeros(b, np.float32), next_obs=obs,
            done=np.zeros(b, bool), mask=np.ones((b, 3), bool), discount=np.full(b, 0.97, np.float32),
            intervention=np.zeros(b, bool), offline=np.ones(b, bool), robot_id=np.array(["r"] * b),
            episode_id=np.array(["e"] * b), step=np.zeros(b, np.int32), snapshot=1, gamma=0.99,
            returns=np.zeros(b, np.float32),
        )  # fmt: skip
        bc.update(batch)
    group = WorkerGroup(rank, 2)
    group.check_sync(WorkerGroup.CHECK_EVERY, policy)
    results["bc_in_sync"] = group.in_sync
    results["bc_moved"] = not torch.equal(start, weights_checksum(policy))
    # 4. the group's turn: commands from the leader reach everyone; a batch missing anywhere holds all
    commands, ready = group.turn([{"kind": "stop"}] if rank == 0 else [], has_batch=rank == 0)
    results["turn"] = (commands, ready)
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    # both ranks leave together: a rank that tears gloo down while the other still talks to it aborts the
    # other ("terminate called without an active exception"), seen once in a full suite run
    dist.barrier()
    dist.destroy_process_group()


def test_two_workers_average_their_gradients_and_stay_identical(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{k}.pt", weights_only=False) for k in (0, 1))
    assert r0["world"] == r1["world"] == 2
    # 1. the same step on both, equal to one step on the mean loss of both batches
    model = net()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    (x0, y0), (x1, y1) = data(0), data(1)
    loss = (((model(x0) - y0) ** 2).mean() + ((model(x1) - y1) ** 2).mean()) / 2
    optim.zero_grad()
    loss.backward()
    optim.step()
    for a, b, expected in zip(r0["averaged"], r1["averaged"], model.parameters(), strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, expected.detach())
    # 2. the idle worker took the other's step: identical weights, moved by rank 0's gradient alone
    assert r1["idle_stepped"] is True
    model = net()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    clipped_step(((model(x0) - y0) ** 2).mean(), optim, list(model.parameters()), 1e9)  # alone: plain step
    for a, b, expected in zip(r0["one_sided"], r1["one_sided"], model.parameters(), strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, expected.detach())
    assert r0["none_stepped"] is False and r1["none_stepped"] is False
    # 3. BC on each worker's own batches kept the weights identical, and trained them
    assert r0["bc_in_sync"] is True and r1["bc_in_sync"] is True
    assert r0["bc_moved"] and r1["bc_moved"]
    # 4. the leader's commands reached the other worker; no update while one worker lacks a batch
    assert r0["turn"] == r1["turn"] == ([{"kind": "stop"}], False)


def test_one_process_is_left_alone():
    model = net()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    assert world_size() == 1 and idle_step(optim, list(model.parameters()), 1.0) is False
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert WorkerGroup().turn([{"kind": "stop"}], has_batch=False) == ([{"kind": "stop"}], False)
