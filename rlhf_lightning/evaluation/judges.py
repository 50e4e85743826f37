"""Judges: machines that rank candidates the way an annotator does, for users without annotators, or to compare
with the people who label. A judge gives each candidate a score (higher is better; equal scores are a tie).

- :class:`RuleJudge`: a user's ``module:function`` with the reward-function signature
  ``f(prompts: list[str], responses: list[str]) -> list[float]``, e.g. the quickstart's gold rule
  ``rlhf_lightning.data.synthetic:gold_reward``;
- :class:`ConstitutionJudge`: AI feedback guided by a written constitution, in the spirit of Constitutional
  AI (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback", and the RLAIF labelling it
  describes). A causal LM reads the principles, the request and one candidate, and is asked whether the answer
  follows the principles; the candidate's score is ``log p("Yes") - log p("No")`` for the model's next token.
  Scoring candidates one at a time (instead of the paper's multiple-choice comparison of two) ranks any
  number of them with K forward passes.

Judges see the prompt as the model saw it: a text prompt is its text, and a conversation is every turn of it
(system message, earlier turns, tool calls and results, the final request) and its tool definitions, written
out by :func:`transcript`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch

from rlhf_lightning.data.chat import text_rows_as_chat
from rlhf_lightning.data.errors import OptionError, RowLocation
from rlhf_lightning.data.formats import tokenize_prompt
from rlhf_lightning.models.adapters import RoleLoader, next_token_logprobs
from rlhf_lightning.models.config import DType, ModelConfig, Quantization
from rlhf_lightning.models.loading import load_tokenizer, resolve_device
from rlhf_lightning.models.run_folder import RunFolder, require_model
from rlhf_lightning.models.score_function import ScoreFunction, require_finite
from rlhf_lightning.ops import left_pad

JUDGE_QUESTION = (
    "Here are the principles a good answer follows:\n{constitution}\n\n"
    "A user asked:\n{prompt}\n\nAn assistant answered:\n{response}\n\n"
    "Does this answer follow all of the principles? Reply with Yes or No."
)
"""The constitution judge's question for each candidate to a text prompt."""
CONVERSATION_QUESTION = (
    "Here are the principles a good answer follows:\n{constitution}\n\n"
    "Here is a conversation between a user and an assistant:\n\n{prompt}\n\n"
    "The assistant's next reply:\n{response}\n\n"
    "Does this reply follow all of the principles? Reply with Yes or No."
)
"""The constitution judge's question for each candidate to a conversation (the prompt is its :func:`transcript`)."""
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def transcript(prompt: str | list[dict], tools: list[dict] | None = None) -> str:
    """The prompt as one text, as judges read it. A text prompt is returned as it is. A conversation (a list of
    ``{"role", "content"}`` messages) becomes every turn in order, one paragraph each, starting with its role
    (``System:``, ``User:``, ``Assistant:``, ``Tool:``); an assistant's tool calls follow its text as
    ``[calls NAME with {arguments as JSON}]``, and the tool definitions come first (``Tools: [...]`` as JSON)."""
    if isinstance(prompt, str):
        return prompt
    parts = [f"Tools: {json.dumps(tools, ensure_ascii=False)}"] if tools else []
    for message in prompt:
        role = str(message.get("role", ""))
        label = ROLE_NAMES.get(role, role.capitalize())
        if role == "tool" and message.get("name"):
            label += f" ({message['name']})"
        lines = [message.get("content") or ""]
        for call in message.get("tool_calls") or []:
            function = call.get("function", call)
            arguments = json.dumps(function.get("arguments", {}), ensure_ascii=False)
            lines.append(f"[calls {function.get('name')} with {arguments}]")
        parts.append(f"{label}: " + "\n".join(line for line in lines if line))
    return "\n\n".join(parts)


class Judge(Protocol):
    name: str
    """How its judgements are recorded: the annotator name is ``judge:`` + ``name``."""

    def scores(self, prompt: str | list[dict], responses: list[str], tools: list[dict] | None = None) -> list[float]:
        """One score per response to ``prompt`` (higher is better; equal scores tie): a text prompt, or a
        conversation's messages with ``tools`` its tool definitions."""
        ...


class RuleJudge:
    """Scores with a user's ``module:function`` (the reward-function signature); its results are checked
    (one finite number per response) as a reward function's are. Each entry of ``prompts`` is the prompt's
    :func:`transcript`: a text prompt's text, or every turn of a conversation, each starting with its role."""

    def __init__(self, path: str, name: str | None = None) -> None:
        try:
            self.function = ScoreFunction(path, "judge")
        except ValueError as error:
            raise OptionError(f"--judge: {error}") from error
        self.name = name or path

    def scores(self, prompt: str | list[dict], responses: list[str], tools: list[dict] | None = None) -> list[float]:
        return self.function([transcript(prompt, tools)] * len(responses), list(responses)).tolist()


class ConstitutionJudge:
    """Asks a causal LM whether each answer follows a written constitution (:data:`JUDGE_QUESTION`; for a
    conversation :data:`CONVERSATION_QUESTION`, with every turn of it).

    Args:
        constitution: A text file of principles (any wording; one per line reads well).
        model: The judging model: a run's ``final`` folder, a Hugging Face folder or hub id, or ``embedded``.
        name: Recorded name; default ``constitution:<file name>@<model>``.
        batch_size: Candidates per forward pass.

    Raises:
        OptionError: the constitution file is missing or empty, or the model's tokenizer spells ``Yes`` and
            ``No`` with the same first token.
    """

    def __init__(
        self,
        constitution: str,
        model: str = "embedded",
        name: str | None = None,
        batch_size: int = 8,
        max_length: int = 1024,
        device: str = "auto",
        dtype: DType = "float32",
        quantization: Quantization = "none",
    ) -> None:
        path = Path(constitution)
        if not path.is_file():
            raise OptionError(f"--constitution: no such file {constitution}")
        self.principles = path.read_text(encoding="utf-8").strip()
        if not self.principles:
            raise OptionError(f"--constitution: {constitution} is empty; write the principles answers should follow")
        require_model(model, "--judge_model")
        self.name = name or f"constitution:{path.name}@{model}"
        self.batch_size, self.max_length = batch_size, max_length
        self.device = resolve_device(device)
        self.tokenizer = load_tokenizer(RunFolder(model).tokenizer_source)
        self.chat = text_rows_as_chat(self.tokenizer, "auto")
        # After a chat template's generation prompt the reply starts the line; in raw text it follows a space.
        space = "" if self.chat else " "
        self.answer_ids = [self._first_token(space + word) for word in ("Yes", "No")]
        if self.answer_ids[0] == self.answer_ids[1]:
            raise OptionError(f"--judge_model {model}: 'Yes' and 'No' start with the same token; choose another model")
        self.role = RoleLoader(ModelConfig(dtype=dtype, quantization=quantization), self.device).load(model, "judge")

    def _first_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0]

    def question(self, prompt: str | list[dict], response: str, tools: list[dict] | None = None) -> list[int]:
        """Token ids of the question about one answer, ending where the model's reply begins."""
        template = JUDGE_QUESTION if isinstance(prompt, str) else CONVERSATION_QUESTION
        text = template.format(constitution=self.principles, prompt=transcript(prompt, tools), response=response)
        if not self.chat:
            text += "\nReply:"
        example = tokenize_prompt({"prompt": text}, self.tokenizer, RowLocation("judge question", 1), self.chat)
        return example.input_ids[-self.max_length :]  # the end holds the answer and the question

    def scores(self, prompt: str | list[dict], responses: list[str], tools: list[dict] | None = None) -> list[float]:
        out: list[float] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(responses), self.batch_size):
            batch = [self.question(prompt, r, tools) for r in responses[start : start + self.batch_size]]
            ids, mask = left_pad(batch, pad, self.device)
            logprobs = next_token_logprobs(self.role, ids, mask, self.answer_ids)
            out.extend(require_finite(logprobs[:, 0] - logprobs[:, 1], f"judge {self.name}").tolist())
        return out


@torch.no_grad()
def judge_scores(
    judge: Judge, prompt: str | list[dict], responses: list[str], tools: list[dict] | None = None
) -> list[float]:
    """``judge.scores`` with its length checked."""
    scores = list(judge.scores(prompt, responses, tools))
    if len(scores) != len(responses):
        raise ValueError(f"judge {judge.name} gave {len(scores)} scores for {len(responses)} responses")
    return scores
