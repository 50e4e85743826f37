"""Stage 1: supervised fine-tuning on demonstrations."""

from __future__ import annotations

import torch

from rlhf_lightning.callbacks import GenerationSamples, SampleConfig, ThroughputMonitor
from rlhf_lightning.models import decoder_and_head, final_hidden_states
from rlhf_lightning.models.loading import output_head
from rlhf_lightning.modules.base import CausalLMModule
from rlhf_lightning.modules.metrics import TokenNLL
from rlhf_lightning.ops import masked_mean, token_logprobs_from_hidden


class SFTModule(CausalLMModule):
    """Next-token negative log-likelihood on the trained tokens of each demonstration.

    The loss is the mean over all trained tokens of the batch (each token weighs the same, however long
    its sequence). Logged: ``train/loss``, ``val/loss``, ``val/perplexity``, ``lr``, tokens/s, peak memory,
    and a table of sample responses.

    Args:
        samples: The table of sample responses in TensorBoard.
        logprob_chunk_size: Positions per chunk when applying the LM head; bounds the logits memory to
            ``chunk x vocab`` floats.
        **kwargs: ``model``, ``lora`` and ``optim`` (:class:`~rlhf_lightning.modules.base.CausalLMModule`).
    """

    stage = "sft"
    validation_without_repeats = True  # sums over rows (torchmetrics), synced across ranks

    def __init__(
        self,
        *,
        samples: SampleConfig = SampleConfig(),  # noqa: B008 - dataclass defaults show every field in --help
        logprob_chunk_size: int = 1024,
        **kwargs,
    ) -> None:
        if logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size must be >= 1, got {logprob_chunk_size}")
        super().__init__(**kwargs)
        self.samples = samples
        self.logprob_chunk_size = logprob_chunk_size
        self.val_nll = TokenNLL()

    def configure_callbacks(self) -> list:
        return [ThroughputMonitor(), GenerationSamples(self.samples)]

    def target_logprobs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-prob of every trained token given its prefix, ``(b, t-1)``, and the mask of trained tokens."""
        decoder, _ = decoder_and_head(self.model)
        head = output_head(self.model)
        hidden = final_hidden_states(decoder, batch["input_ids"], batch["attention_mask"])
        mask = batch["loss_mask"][:, 1:]
        logprobs = token_logprobs_from_hidden(
            hidden[:, :-1],
            head.weight,
            batch["input_ids"][:, 1:],
            bias=head.bias,
            logit_scale=head.logit_scale,
            mask=mask,
            chunk_size=self.logprob_chunk_size,
        ).logprobs
        return logprobs, mask

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logprobs, mask = self.target_logprobs(batch)
        loss = -masked_mean(logprobs, mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logprobs, mask = self.target_logprobs(batch)
        self.val_nll.update(logprobs, mask)

    def on_validation_epoch_end(self) -> None:
        nll = self.val_nll.compute()
        self.val_nll.reset()
        self.log_dict({"val/loss": nll, "val/perplexity": nll.exp()}, prog_bar=True, sync_dist=False)
