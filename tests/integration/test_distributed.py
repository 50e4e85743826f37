"""The stages under Lightning's DDP strategy with two CPU processes (gloo): statistics over all ranks, ranks
in step, and every stage running end to end."""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf_lightning.modules.ppo import Rollout
from tests.helpers import ROOT, make_run_folder
from tests.integration.test_pipeline import stage_configs
from tests.modules.test_ppo import shared_module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(seed: int, rows: int, prompt: int = 5, response: int = 6):
    """Sequences ``[prompt | response]`` with responses of different lengths (the rest masked out)."""
    g = torch.Generator().manual_seed(seed)
    sequences = torch.randint(5, 60, (rows, prompt + response), generator=g)
    lengths = torch.randint(1, response + 1, (rows,), generator=g)
    mask = torch.arange(response)[None, :] < lengths[:, None]
    attention_mask = torch.cat([torch.ones(rows, prompt, dtype=torch.long), mask.long()], dim=1)
    ended = lengths < response
    return sequences, attention_mask, mask, ended


def _experience(base, sft, reward, batch):
    torch.manual_seed(0)
    module = shared_module(base, sft, reward)
    exp, stats = module.make_experience(Rollout(*batch, prompt_length=5))
    return exp.advantages, exp.returns, stats.kl


def _rank_worker(rank: int, port: int, base: str, sft: str, reward: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        advantages, returns, kl = _experience(base, sft, reward, _batch(seed=rank, rows=3))
        torch.save({"advantages": advantages, "returns": returns, "kl": kl}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_advantage_whitening_and_kl_use_every_rank(tiny_llama, tmp_path):
    """Two ranks with 3 sequences each whiten advantages exactly as one process does with all 6."""
    sft = make_run_folder(tiny_llama, tmp_path / "sft", "sft", 1)
    reward = make_run_folder(tiny_llama, tmp_path / "reward", "reward", 2)
    mp.spawn(_rank_worker, args=(_free_port(), tiny_llama, str(sft), str(reward), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    union = [torch.cat(parts) for parts in zip(*(_batch(seed=r, rows=3) for r in range(2)))]
    advantages, returns, kl = _experience(tiny_llama, sft, reward, union)
    torch.testing.assert_close(torch.cat([r["advantages"] for r in ranks]), advantages, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat([r["returns"] for r in ranks]), returns, atol=1e-5, rtol=1e-4)
    for r in ranks:  # each rank logs the KL of the whole global batch
        torch.testing.assert_close(r["kl"], kl, atol=1e-5, rtol=1e-4)
    # and each rank's share alone is not whitened: its local mean is not 0, only the union's is
    mask = union[2]
    local_means = [(r["advantages"] * m).sum() / m.sum() for r, m in zip(ranks, mask.split(3))]
    assert max(abs(float(m)) for m in local_means) > 1e-3
    assert abs(float((advantages * mask).sum() / mask.sum())) < 1e-5


class ParameterDigest(L.Callback):
    """Writes a digest of the trainable weights of each rank at the end of training."""

    def on_train_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for name, p in sorted(pl_module.named_parameters()):
            if p.requires_grad:
                digest.update(name.encode() + p.detach().cpu().float().numpy().tobytes())
        path = Path(trainer.default_root_dir) / f"digest-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"digest": digest.hexdigest(), "world_size": trainer.world_size}))


def _fit_ddp(config: str, run: Path, *extra: str, strategy: str = "ddp") -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "rlhf_lightning.cli", "fit", "--config", config,
        f"--trainer.default_root_dir={run}", "--trainer.accelerator=cpu", "--trainer.devices=2",
        f"--trainer.strategy={strategy}", "--trainer.callbacks+=tests.integration.test_distributed.ParameterDigest",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "MASTER_PORT": str(_free_port()), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _assert_ranks_in_step(run: Path) -> None:
    digests = [json.loads((run / f"digest-rank{r}.json").read_text()) for r in range(2)]
    assert digests[0]["world_size"] == 2
    assert digests[0]["digest"] == digests[1]["digest"]  # gradients were averaged: same weights everywhere
    assert (run / "final" / "rlhf_lightning.json").exists()


def test_sft_reward_and_ppo_train_with_ddp_on_two_cpu_processes(tiny_llama, tmp_path):
    configs = stage_configs(tmp_path, tiny_llama)
    sft_run, reward_run, ppo_run = tmp_path / "sft", tmp_path / "reward", tmp_path / "ppo"
    for config, run, extra in (
        (configs["sft"], sft_run, []),
        (configs["reward"], reward_run, [f"--model.init_args.model.adapter={sft_run / 'final'}"]),
    ):
        result = _fit_ddp(config, run, *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        _assert_ranks_in_step(run)
    ppo_extra = [
        f"--model.init_args.model.adapter={sft_run / 'final'}",
        f"--model.init_args.reward_model={reward_run / 'final'}",
        "--trainer.max_steps=8",
    ]
    refused = _fit_ddp(configs["ppo"], tmp_path / "ppo-plain-ddp", *ppo_extra)
    assert refused.returncode != 0 and "ddp_find_unused_parameters_true" in refused.stderr
    result = _fit_ddp(configs["ppo"], ppo_run, *ppo_extra, strategy="ddp_find_unused_parameters_true")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_ranks_in_step(ppo_run)
    from tests.helpers import scalars

    # 12 training prompts (75% of 16), 6 per rank, in batches of 4 then 2: two iterations see each prompt once
    assert scalars(ppo_run, "episode") == {0: 8.0, 1: 12.0}
