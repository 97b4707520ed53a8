"""What an LLM judge's verdict on one pair costs: its calls' text, counted in the unit its provider bills, at a price.

A judge strategy is a list of calls (`JudgeCall`): auxiliary calls made once per pair (LLMBar's `Metrics_Reference`
first asks for questions about the instruction and for a reference output) and the comparison, made once per
presentation order. Each call reads its prompt template filled with the pair's texts (and the auxiliary outputs) and
writes `output_units`; `pair_cost` prices both at the judge's rates. A self-hosted model's rates come from an assumed
GPU price and throughput (`GPUTime`). Every number that is not measured on the pair is an input of the config, with
its source or the assumption it is (`JudgeCost.source`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from rmrouter.data.sources import vendored_path

Unit = Literal["token", "character"]
AUXILIARY = re.compile(r"\{auxiliary_input_(\d+)\}")
ORDERS = 2  # LLMBar's judges compare each pair in both presentation orders


@dataclass(frozen=True)
class JudgeCall:
    """One call of a judge strategy.

    Args:
        template: Its prompt, a file of `rmrouter/vendor/llmbar/prompts/` (LLMBar's own), whose `{input}`,
            `{output_1}` and `{output_2}` are the pair's texts and `{auxiliary_input_<i>}` the output of the strategy's
            `i`-th auxiliary call.
        per_order: Made once per presentation order (the comparison), or once per pair (an auxiliary call, whose
            output both orders reuse).
        output_units: What the judge writes, in the judge's unit: an assumption (the answer's length, or the call's
            cap on its output, an upper bound).
    """

    template: str
    per_order: bool
    output_units: int


@dataclass(frozen=True)
class GPUTime:
    """A self-hosted model's rates from a GPU price and its throughput, all assumptions the config states.

    Args:
        gpus: GPUs that serve one copy of the model.
        price_per_gpu_hour: USD per GPU-hour.
        prefill_tokens_per_second: Prompt tokens read per second.
        decode_tokens_per_second: Tokens written per second.
    """

    gpus: int
    price_per_gpu_hour: float
    prefill_tokens_per_second: float
    decode_tokens_per_second: float

    def token_prices(self) -> tuple[float, float]:
        """USD per million tokens read and written."""
        per_second = self.gpus * self.price_per_gpu_hour / 3600
        return per_second / self.prefill_tokens_per_second * 1e6, per_second / self.decode_tokens_per_second * 1e6


@dataclass(frozen=True)
class JudgeCost:
    """A judge's price per verdict: its strategy's calls, the unit its provider bills and the rates.

    Args:
        unit: `token` (counted with `tokenizer`) or `character` (Unicode code points, whitespace not counted, as
            Google's Vertex AI billed PaLM 2).
        calls: The strategy's calls, auxiliary ones first, in order.
        source: Where the rates come from, with their date, or what was assumed.
        input_price: USD per million units read; with `output_price`, or `gpu` instead.
        output_price: USD per million units written.
        gpu: Rates of a self-hosted model, instead of a list price.
        tokenizer: The tokenizer that counts tokens (a model store name or folder): not the judge's own, which the
            project does not have, so token counts are estimates.
    """

    unit: Unit
    calls: list[JudgeCall]
    source: str
    input_price: float | None = None
    output_price: float | None = None
    gpu: GPUTime | None = None
    tokenizer: str = "smollm2-135m-instruct"
    rates: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        if (self.gpu is None) == (self.input_price is None or self.output_price is None):
            raise ValueError("a judge cost needs either input_price and output_price, or gpu")
        if self.gpu is not None and self.unit != "token":
            raise ValueError("gpu rates are per token: set unit: token")
        rates = self.gpu.token_prices() if self.gpu is not None else (self.input_price, self.output_price)
        if min(rates) < 0 or not self.calls or not any(call.per_order for call in self.calls):
            raise ValueError("prices must be >= 0, and the calls must include the comparison (per_order: true)")
        object.__setattr__(self, "rates", rates)


def pair_cost(cost: JudgeCost, instruction: str, output_1: str, output_2: str, count: Callable[[str], int]) -> float:
    """USD of one verdict on a pair (both presentation orders), `count` giving a text's units in `cost.unit`."""
    input_price, output_price = cost.rates
    texts = {"input": instruction, "output_1": output_1, "output_2": output_2}
    auxiliary: list[int] = []
    total = 0.0
    for call in cost.calls:
        template = prompt_template(call.template)
        inserted = [auxiliary[int(index)] for index in AUXILIARY.findall(template)]
        read = count(AUXILIARY.sub("", template).format_map(texts)) + sum(inserted)
        total += (ORDERS if call.per_order else 1) * (read * input_price + call.output_units * output_price) / 1e6
        if not call.per_order:
            auxiliary.append(call.output_units)
    return total


@lru_cache(maxsize=16)
def prompt_template(name: str) -> str:
    return vendored_path(f"llmbar/prompts/{name}").read_text(encoding="utf-8")


def unit_counter(cost: JudgeCost) -> Callable[[str], int]:
    """Counts a text's units as `cost` bills them."""
    if cost.unit == "character":
        return lambda text: sum(not character.isspace() for character in text)
    tokenizer = _tokenizer(cost.tokenizer)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=4)
def _tokenizer(name: str):
    from rmrouter.models.store import load_tokenizer

    return load_tokenizer(name)
