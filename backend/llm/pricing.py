"""What a run costs: USD per million input/output tokens per model, and the bill for token counts.

The built-in table holds list prices of common hosted models as published by the providers in 2026
(check your contract: prices change). LLM_PRICES (a JSON object, or a path to a JSON file) adds or
overrides entries: `{"my-model": [0.2, 0.8]}`. A model is matched exactly, then by the longest known
prefix (so `gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`); an unknown model has no price and
its cost is shown as unknown, never as zero. Self-hosted servers cost nothing per token: price them 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# model -> (input, output) USD per 1M tokens
BUILT_IN: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
    "o4-mini": (1.10, 4.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    # the embedded local model and the test provider run on your own hardware
    "smollm2-135m-instruct": (0.0, 0.0),
}


@dataclass(frozen=True)
class Price:
    input_per_million: float
    output_per_million: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


class PriceTable:
    def __init__(self, prices: Mapping[str, tuple[float, float]]) -> None:
        self.prices = {name: Price(float(i), float(o)) for name, (i, o) in prices.items()}

    @classmethod
    def from_setting(cls, value: str | None) -> PriceTable:
        """The built-in table with LLM_PRICES merged over it; raises ValueError naming the problem."""
        table = dict(BUILT_IN)
        if value:
            text = value
            if not value.lstrip().startswith("{"):
                try:
                    text = Path(value).read_text(encoding="utf-8")
                except OSError as exc:
                    raise ValueError(f"LLM_PRICES: cannot read {value}: {exc.strerror}") from None
            try:
                extra = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"LLM_PRICES is not valid JSON: {exc.msg}") from None
            if not isinstance(extra, dict):
                raise ValueError('LLM_PRICES must be a JSON object {"model": [input, output]}')
            for name, pair in extra.items():
                if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                        or not all(isinstance(x, (int, float)) and x >= 0 for x in pair)):
                    raise ValueError(f"LLM_PRICES[{name!r}] must be [input, output] USD per million tokens")
                table[str(name)] = (float(pair[0]), float(pair[1]))
        return cls(table)

    def price(self, model: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        name = model.rsplit("/", 1)[-1]  # "openai/gpt-4o-mini" style names of routers
        matches = [known for known in self.prices if name.startswith(known)]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        price = self.price(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens)


def format_cost(cost: float | None) -> str:
    if cost is None:
        return "unknown (set LLM_PRICES)"
    return f"${cost:,.4f}" if cost < 1 else f"${cost:,.2f}"
