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
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf_lightning.callbacks import SampleConfig
from rlhf_lightning.data import ComparisonsDataModule, DemonstrationsDataModule
from rlhf_lightning.models import LoraConfig, ModelConfig
from rlhf_lightning.modules import PPOModule, RewardModule, SFTModule
from rlhf_lightning.modules.ppo import PPOConfig, Rollout
from rlhf_lightning.modules.ppo.rollout import Experience
from rlhf_lightning.modules.ppo.update import ppo_update
from tests.helpers import ROOT, make_run_folder, write_jsonl
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


PPO_UPDATE = PPOConfig(ppo_epochs=1, num_minibatches=1, micro_batch_size=2, entropy_coef=0.01)


def _update_module(base: str, state: dict | None = None) -> PPOModule:
    """A PPO module with a rule as reward (no run folders needed), its trainable weights set to ``state``."""
    torch.manual_seed(0)
    module = PPOModule(model=ModelConfig(name_or_path=base), lora=LoraConfig(r=4), ppo=PPO_UPDATE,
                       reward_function="tests.modules.test_ppo:vowel_reward")  # fmt: skip
    module.configure_model()
    if state is not None:
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name in state:
                    p.copy_(state[name])
    return module


def _update_gradients(module: PPOModule, exp: Experience) -> dict[str, torch.Tensor]:
    """The gradients of the one optimizer step of a PPO update (policy, KL and entropy terms, value loss) on
    ``exp``, averaged over the ranks as DDP averages them (sum over ranks, divided by their number)."""
    grads = {}

    def step() -> list:
        for name, p in module.named_parameters():
            if p.grad is not None:
                if dist.is_initialized():
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
                grads[name] = p.grad.clone()
        module.zero_grad(set_to_none=True)
        return []

    torch.manual_seed(1)
    ppo_update(exp, module.roles["policy"], module.roles["value"], PPO_UPDATE, 0.7, lambda loss: loss.backward(),
               step, kl_coef=0.1, kl_estimator="k3")  # fmt: skip
    return grads


def _update_worker(rank: int, port: int, base: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        shared = torch.load(Path(out) / "shared.pt")
        module = _update_module(base, shared["state"])
        rows = slice(3 * rank, 3 * rank + 3)  # each rank half of the rows
        exp = Experience(*(t[rows] for t in shared["experience"]))
        torch.save(_update_gradients(module, exp), Path(out) / f"grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ppo_update_gradients_on_two_ranks_equal_one_process_on_all_rows(tiny_llama, tmp_path):
    """Every response token weighs the same in the loss however the rows are sharded: the gradients that DDP
    averages over two ranks of 3 rows each are one process's over the 6 rows."""
    module = _update_module(tiny_llama)
    with torch.no_grad():  # trained-looking weights: LoRA's B starts at 0, which would zero A's gradients
        g = torch.Generator().manual_seed(2)
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    # responses of 1 to 6 tokens: the two ranks hold different numbers of response tokens
    sequences, attention_mask, mask, ended = _batch(seed=3, rows=6)
    mask[:3, 1:], attention_mask[:3, 6:] = False, 0  # one-token responses on the first rank
    exp, _ = module.make_experience(Rollout(sequences, attention_mask, mask, ended, prompt_length=5))
    assert mask[:3].sum() != mask[3:].sum()
    state = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    torch.save({"state": state, "experience": tuple(exp)}, tmp_path / "shared.pt")
    mp.spawn(_update_worker, args=(_free_port(), tiny_llama, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"grads{r}.pt") for r in range(2)]
    whole = _update_gradients(module, exp)
    assert set(whole) == set(ranks[0]) and any(".default." in n for n in whole) and "value_head.linear.weight" in whole
    for name, grad in whole.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(ranks[0][name], ranks[1][name], atol=0, rtol=0)  # DDP's average: the same
        torch.testing.assert_close(ranks[0][name], grad, atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def _validation_data(root: Path) -> dict[str, str]:
    """5 validation rows for each of SFT and the reward model (an odd number: 3 and 2 on two ranks), of different
    lengths, and training rows with other prompts."""
    files = {}
    for split, first in (("train", 10), ("val", 0)):
        demos = [{"prompt": f"q{i} " + "x " * i, "completion": "ab " * (1 + i % 3)} for i in range(first, first + 5)]
        pairs = [{"prompt": f"q{i} " + "y " * i, "chosen": "a" * (1 + i % 5), "rejected": "b" * (4 - i % 3)}
                 for i in range(first, first + 5)]  # fmt: skip
        files[f"{split}_demos"] = write_jsonl(root / f"{split}_demos.jsonl", demos)
        files[f"{split}_pairs"] = write_jsonl(root / f"{split}_pairs.jsonl", pairs)
    return files


def _validation_metrics(base: str, data: dict[str, str], devices: int) -> dict[str, dict[str, float]]:
    """The figures ``trainer.validate`` logs for a fresh SFT and reward model on ``data``'s validation rows."""
    model, raw = ModelConfig(name_or_path=base), {"chat_template": "never", "batch_size": 2}
    stages = {
        "sft": (lambda: SFTModule(model=model, lora=LoraConfig(r=4), samples=SampleConfig(every_n_steps=0)),
                DemonstrationsDataModule(data["train_demos"], val_files=data["val_demos"], **raw)),
        "reward": (lambda: RewardModule(model=model, lora=LoraConfig(r=4), degenerate_check_prompts=0),
                   ComparisonsDataModule(data["train_pairs"], val_files=data["val_pairs"], **raw)),
    }  # fmt: skip
    metrics = {}
    for stage, (make_module, datamodule) in stages.items():
        L.seed_everything(0)  # the same score head on every rank
        trainer = L.Trainer(
            accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
            enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        )  # fmt: skip
        (logged,) = trainer.validate(make_module(), datamodule=datamodule, verbose=False)
        metrics[stage] = {k: float(v) for k, v in logged.items()}
    return metrics


def _validation_worker(rank: int, port: int, base: str, data: dict[str, str], out: str) -> None:
    # this process is one of Lightning's DDP ranks, started outside Lightning
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0")
    os.environ.update(LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    (Path(out) / f"val{rank}.json").write_text(json.dumps(_validation_metrics(base, data, devices=2)))


def test_sft_and_reward_validation_on_two_ranks_equals_one_process(tiny_llama, tmp_path):
    """5 validation rows on 2 ranks: no row is counted twice (DistributedSampler would repeat one to give both
    ranks 3), and the metrics are sums over rows synced across ranks, so every figure is one process's."""
    data = _validation_data(tmp_path)
    mp.spawn(_validation_worker, args=(_free_port(), tiny_llama, data, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"val{r}.json").read_text()) for r in range(2)]
    one = _validation_metrics(tiny_llama, data, devices=1)
    assert set(one["sft"]) == {"val/loss", "val/perplexity"}
    assert {"val/loss", "val/accuracy", "val/margin", "val/chosen_mean", "val/rejected_std"} <= set(one["reward"])
    for stage, figures in one.items():
        for rank in ranks:
            assert rank[stage] == pytest.approx(figures, rel=1e-6, abs=1e-6), stage


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
