"""What one request asks of `generate`, as one typed value: the CLI, the apps and the OpenAI API
build a `GenerationOptions` and hand it down unchanged, instead of dicts of keywords."""

import dataclasses
import numbers
from dataclasses import dataclass

from ..errors import Phi4MMError
from .adapters import AUTO
from .sampling import Sampling


@dataclass(frozen=True)
class GenerationOptions:
    """`max_new_tokens` caps the answer; temperature 0 is greedy (top_p, top_k, seed: see
    Sampling); `adapter` is "auto" (by the media), "none" or an adapter of the artifact;
    `max_crops` caps an image's HD tiling below the model's limit (None: the model's)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    adapter: str = AUTO  # chosen by the request's media (adapters.choose_adapter)
    max_crops: int | None = None

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, numbers.Integral) \
                or self.max_new_tokens < 1:
            raise Phi4MMError(f"max_new_tokens {self.max_new_tokens!r}: give a whole number of at least 1")
        if not isinstance(self.adapter, str):
            raise Phi4MMError(f"adapter {self.adapter!r}: give 'auto', 'none' or the name of an "
                              f"adapter of the artifact")
        if self.max_crops is not None and (isinstance(self.max_crops, bool)
                                           or not isinstance(self.max_crops, numbers.Integral)
                                           or self.max_crops < 1):
            raise Phi4MMError(f"max_crops {self.max_crops!r}: give a whole number of tiles, at least 1")
        self.sampling  # validates temperature, top_p, top_k and seed

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.top_k, self.seed)

    def but(self, **changes) -> "GenerationOptions":
        """A copy with `changes` (field names as keywords); an unknown name is a Phi4MMError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            fields = ", ".join(f.name for f in dataclasses.fields(self))
            raise Phi4MMError(f"unknown generation option(s) {', '.join(unknown)}: the options are {fields}")
        return dataclasses.replace(self, **changes) if changes else self
