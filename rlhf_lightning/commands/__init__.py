"""The commands besides LightningCLI's ``fit`` and ``validate``: ``pipeline`` (every stage in one root folder),
``evaluate`` (two policies compared), ``score`` (rows scored by a reward model), ``export`` (a run as a plain
Hugging Face folder). Each is a function whose signature is its command line."""
