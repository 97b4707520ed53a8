"""The routed scorer of `benchmarks/serving.py` served by LitServe instead of rmrouter's FastAPI app, to compare the
two serving libraries on the same requests (`python benchmarks/serving.py --litserve` starts this).

LitServe batches requests (up to `max_batch_size`, waiting `batch_timeout`), runs the model in a worker process and
answers through its own FastAPI server; the API below decodes the same `/score` payload, scores a batch of requests'
groups together as rmrouter's server does, and answers each request's rewards and cost.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import litserve as ls

from rmrouter.routers.baseline_routers import DataLabelRouter
from rmrouter.serving.groups import CompletionGroups
from rmrouter.serving.protocol import ScoreRequest
from rmrouter.serving.scorer import RoutedScorer
from rmrouter.serving.server import split_rewards


class RoutedLitAPI(ls.LitAPI):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(max_batch_size=64, batch_timeout=0.002, api_path="/score")
        self.args = args

    def setup(self, device) -> None:
        from serving import behaviour_data, default_pool

        rm_names, _, lookup = behaviour_data(self.args.behaviour, self.args.offline_config)
        costs = json.loads(self.args.costs.read_text())["seconds_per_pair"]
        self.scorer = RoutedScorer(default_pool(self.args.behaviour, rm_names, costs), DataLabelRouter(routing=lookup))

    def decode_request(self, request: dict) -> CompletionGroups:
        return ScoreRequest.model_validate(request).groups()

    def batch(self, inputs: list[CompletionGroups]) -> list[CompletionGroups]:
        return inputs

    def predict(self, batch: list[CompletionGroups] | CompletionGroups):
        parts = batch if isinstance(batch, list) else [batch]
        scored = self.scorer.score(CompletionGroups.concat(parts))
        shares = split_rewards(scored, parts, self.scorer)
        return shares if isinstance(batch, list) else shares[0]

    def unbatch(self, output):
        return output

    def encode_response(self, output) -> dict:
        return {"rewards": output.rewards, "cost": output.cost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--behaviour", type=Path, required=True)
    parser.add_argument("--offline-config", type=Path, required=True)
    parser.add_argument("--costs", type=Path, required=True)
    args = parser.parse_args()
    server = ls.LitServer(RoutedLitAPI(args), accelerator="cpu", workers_per_device=1, timeout=600)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
