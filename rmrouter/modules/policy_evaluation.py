"""`test` for policies: the downstream evaluation (`rmrouter.evaluation.Evaluation`) as Lightning test hooks.

`OnlineDPOModule` evaluates the policy it trained against its own start (the LoRA adapter disabled, or the frozen
reference copy); `PolicyEvaluationModule` does the same for any causal LM or exported policy against a named
baseline. Both read their prompts from the datamodule's `test` sources (`PromptDataModule(test=...)`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from lightning.pytorch import LightningModule

from rmrouter.callbacks.smoke_run import writes_artifacts
from rmrouter.evaluation.evaluation import Evaluation, Generate, gather_rows, no_grad_generate


class EvaluationHooks:
    """The test loop of a policy module: answers per batch, judged and written at the end of the epoch.

    A module using it has `evaluation` (an `Evaluation` or None), `tokenizer`, and `evaluated_models()`.
    """

    evaluation: Evaluation | None

    def evaluated_models(self) -> tuple[Generate, Generate, str]:
        """`(policy, baseline, baseline name)`: the two answer functions and the cache key of the baseline's."""
        raise NotImplementedError

    def evaluation_title(self) -> str:
        return "Downstream evaluation"

    def _require_evaluation(self) -> Evaluation:
        if self.evaluation is None:
            raise ValueError(
                f"{type(self).__name__} has no `evaluation`: compose the evaluation config, e.g. "
                "`--config configs/evaluation/downstream.yaml`, to test it"
            )
        return self.evaluation

    def on_test_epoch_start(self) -> None:
        evaluation = self._require_evaluation()
        evaluation.judge.to(self.device)
        evaluation.start()

    def test_step(self, batch, batch_idx: int) -> None:
        policy, baseline, name = self.evaluated_models()
        self._require_evaluation().add_batch(list(batch), self.tokenizer, policy, baseline, name)

    def on_test_epoch_end(self) -> None:
        evaluation = self._require_evaluation()
        rows = gather_rows(evaluation.rows)
        folder = Path(evaluation.output_dir or Path(self.trainer.default_root_dir) / "evaluation")
        write = self.trainer.is_global_zero and writes_artifacts(self.trainer, folder)
        metrics = evaluation.finish(rows, folder if write else None, self.evaluation_title())
        for name, value in metrics.items():
            self.log(f"test/{name}", value, batch_size=1)


def _precision(module: LightningModule) -> str:
    return str(module.trainer.precision) if module._trainer is not None else "unknown"


class PolicyEvaluationModule(EvaluationHooks, LightningModule):
    """Evaluates any causal LM against a baseline: `python cli.py test --config configs/evaluation/policy.yaml`.

    Args:
        policy: The evaluated model: a folder (an exported policy, merged or a peft adapter), a packaged name or a
            HF id.
        evaluation: What to measure and how (`configs/evaluation/downstream.yaml`).
        baseline: The model it is compared with, e.g. the policy's starting point; it shares the policy's tokenizer.
        trust_remote_code: Let transformers run the models' own code (only for models you trust).
    """

    def __init__(
        self,
        policy: str,
        evaluation: Evaluation | None = None,
        baseline: str = "smollm2-135m-instruct",
        trust_remote_code: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["evaluation"])
        self.evaluation = evaluation
        self.policy = None
        self.baseline = None
        self.tokenizer = None

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        from transformers import AutoModelForCausalLM

        from rmrouter.models.store import load_model, load_tokenizer

        name, trust = self.hparams.policy, self.hparams.trust_remote_code
        self.tokenizer = load_tokenizer(name, trust_remote_code=trust)
        if (Path(name) / "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            self.policy = AutoPeftModelForCausalLM.from_pretrained(name, trust_remote_code=trust).eval()
        else:
            self.policy = load_model(AutoModelForCausalLM, name, trust_remote_code=trust).eval()
        self.policy.requires_grad_(False)
        baseline = load_model(AutoModelForCausalLM, self.hparams.baseline, trust_remote_code=trust)
        self.baseline = baseline.eval().requires_grad_(False)

    def evaluated_models(self) -> tuple[Generate, Generate, str]:
        batch_size = self._require_evaluation().batch_size
        policy = no_grad_generate(self.policy, self.tokenizer, batch_size)
        baseline = no_grad_generate(self.baseline, self.tokenizer, batch_size)
        return policy, baseline, f"{self.hparams.baseline}|{_precision(self)}"

    def evaluation_title(self) -> str:
        return f"Downstream evaluation: {self.hparams.policy} against {self.hparams.baseline}"


def starting_policy_generate(policy, reference, tokenizer, batch_size: int) -> Generate:
    """The answers of an online policy's starting point: the frozen `reference`, else `policy` with its adapter
    disabled."""
    base = no_grad_generate(reference if reference is not None else policy, tokenizer, batch_size)

    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        context = policy.disable_adapter() if reference is None else contextlib.nullcontext()
        with context, torch.no_grad():
            return base(prompts, max_new_tokens)

    return generate
