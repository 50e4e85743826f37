"""Reading, validating and tokenizing data in the ecosystem's formats; the DataModules."""

from rlhf_lightning.data.comparisons import ComparisonsDataModule
from rlhf_lightning.data.demonstrations import DemonstrationsDataModule
from rlhf_lightning.data.errors import DataFormatError
from rlhf_lightning.data.formats import PromptExample, TokenizedExample, tokenize_demonstration
from rlhf_lightning.data.prompts import PromptsDataModule
from rlhf_lightning.data.readers import read_rows

__all__ = [
    "ComparisonsDataModule",
    "DataFormatError",
    "DemonstrationsDataModule",
    "PromptExample",
    "PromptsDataModule",
    "TokenizedExample",
    "read_rows",
    "tokenize_demonstration",
]
