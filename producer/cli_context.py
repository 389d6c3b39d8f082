"""What every `predq` command shares: settings parsed once, a lazy client and store,
and the consoles. Tests pass their own `CliState` (e.g. a client over a stub app)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import click
from rich.console import Console

from modelstore.db import ModelEvaluationDB
from modelstore.errors import StoreError
from modelstore.settings import Settings
from producer.client import PredqClient

ClientFactory = Callable[[Settings], PredqClient]
_PIPE_WIDTH = 140


@dataclass
class CliState:
    client_factory: ClientFactory = PredqClient
    _settings: Settings | None = field(default=None, repr=False)
    _client: PredqClient | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        """Parsed on first use, so `--help` works even with a malformed environment."""
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def client(self) -> PredqClient:
        if self._client is None:
            self._client = self.client_factory(self.settings)
        return self._client

    def db(self) -> ModelEvaluationDB:
        """The store; constructing it creates the schema on an empty database."""
        s = self.settings
        return ModelEvaluationDB(s.database_url, signing_key=s.signing_key,
                                 connect_timeout_s=s.connect_timeout_s)

    def known_models(self, unless: str | None = None) -> str:
        """"known models: a, b" (or that none is stored) for errors and empty outputs;
        empty when the store cannot say, or when it knows model `unless`."""
        try:
            names = self.db().model_names()
        except StoreError:
            return ""
        if unless is not None and unless in names:
            return ""
        if not names:
            return ("no model is stored yet (predq register FILE --model-type TYPE "
                    "--run-id RUN --promote)")
        return "known models: " + ", ".join(names)

    @property
    def out(self) -> Console:
        # Built per call: click's test runner swaps sys.stdout between invocations.
        console = Console()
        if not console.is_terminal and "COLUMNS" not in os.environ:
            console = Console(width=_PIPE_WIDTH)  # rich's 80 columns fold the tables
        return console

    @property
    def err(self) -> Console:
        return Console(stderr=True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def state() -> CliState:
    """The CliState of the running command."""
    return click.get_current_context().ensure_object(CliState)
