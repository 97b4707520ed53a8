"""Online DPO with a routed reward model: sample, pair, route, train.

docs/concepts/method.md, "Setting" and "Online stage: BayesianRouter".

Each step: sample `k` completions per prompt (live) or take labelled pairs (simulated), build unordered candidate
pairs, let the module's `Router` label them, train DPO on the labelled ones, and hand the per-pair losses back to
the router before the optimizer step, so its reward `-L_DPO` is measured on the policy that was routed for.

Without LoRA the frozen reference copy sits in eval mode on purpose (no dropout in its log-probs), so Lightning warns
at the start of the fit that modules are in eval mode.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt, restricted_number_type
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from rmrouter.dpo import LossType
from rmrouter.evaluation.evaluation import Evaluation, Generate, no_grad_generate
from rmrouter.modules.policy_evaluation import EvaluationHooks, starting_policy_generate
from rmrouter.online.logs import PROGRESS_BAR, log_completions, log_dpo, log_labelling, log_samples
from rmrouter.online.pairs import (
    Candidates,
    LiveJudge,
    best_vs_worst_rows,
    live_candidates,
    simulated_candidates,
)
from rmrouter.policy import generation as gen
from rmrouter.policy.checkpoint import check_trainable_weights, keep_trainable_weights, trainable_names
from rmrouter.policy.core import DPOStep, build_policy, dpo_on_labels
from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import PairJudge, Router

# Single values are range-checked at parse time by their types, before any model loads (jsonargparse.typing); a top_p
# of 0 keeps no token, above 1 means nothing.
NucleusMass = restricted_number_type("NucleusMass", float, [(">", 0), ("<=", 1)], join="and")


class OnlineDPOModule(EvaluationHooks, LightningModule):
    """Online (or simulated online) DPO of a causal LM against its frozen initial self, labelled by a routed RM.

    Args:
        policy: The policy's model name (a folder, a packaged name or a HF id), resolved by the model store.
        pool: The RMs the router chooses from; kept out of the checkpoint and the optimizer. None in simulated mode.
        num_samples: Completions sampled per prompt (`k`).
        pairing: `random` (`pairs_per_prompt` random pairs), `all` (every pair) or `best_vs_worst` (every pair is
            routed, one per prompt is trained: see `rmrouter.online.pairs.best_vs_worst_rows`).
        pairs_per_prompt: Pairs drawn per prompt by `random` pairing.
        min_score_gap: Largest RM margin still counted as a tie (no label).
        beta: DPO's KL strength.
        loss_type: `sigmoid` (DPO) or `ipo`.
        max_new_tokens: Longest completion, in tokens (also the cut of simulated responses).
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        max_prompt_length: Prompt tokens kept, from the end.
        missing_eos_penalty: Score subtracted from completions cut at `max_new_tokens`, before pairing.
        lora: peft `LoraConfig` keyword arguments; the reference is then the base with the adapter disabled. None
            trains every weight against a frozen copy.
        simulated: Train on `BehaviourDataModule` batches with recorded margins instead of generating.
        seed: Seed of pair drawing and of the simulated side order (combined with the global step).
        log_text_every_n_steps: How often sample completions go to TensorBoard as text; 0 never.
        router: The router that labels the pairs (e.g. `rmrouter.routers.bayesian.BayesianRouter`); required. It is
            added to the trainer's callbacks by `configure_callbacks` (its state is checkpointed with the run), so a
            method is one `model.init_args.router` entry (`configs/routers/<method>.yaml`). It gets its RM names
            there too: the pool's, or in simulated mode the datamodule's `rm_names`.
        optimizer: Builds the optimizer from the trainable parameters (a config's `class_path: torch.optim.AdamW`
            with its `init_args`, as LightningCLI injects it).
        lr_scheduler: Builds a scheduler from that optimizer, stepped every step; None keeps the rate constant.
        share_prompts: Each prompt runs through the policy once where every row would repeat it: sampling draws
            its `k` completions from copies of its KV cache, and the DPO forwards run its responses on it. The same
            samples, log-probs and gradients up to float rounding, less compute (docs/online_step.md). Off under
            activation checkpointing.
        evaluation: What `test` measures (`rmrouter.evaluation.Evaluation`: GSM8K accuracy and a judged win rate
            against the starting policy, on the datamodule's `test` prompts); None: `test` refuses to run.
    """

    def __init__(
        self,
        policy: str,
        pool: RewardModelPool | None,
        num_samples: int,
        pairing: Literal["random", "all", "best_vs_worst"],
        pairs_per_prompt: PositiveInt,
        min_score_gap: float,
        beta: PositiveFloat,
        loss_type: LossType,
        max_new_tokens: PositiveInt,
        temperature: PositiveFloat,
        top_p: NucleusMass,
        max_prompt_length: PositiveInt,
        missing_eos_penalty: float,
        lora: dict[str, Any] | None,
        simulated: bool,
        seed: int,
        log_text_every_n_steps: int,
        router: Router,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None = None,
        share_prompts: bool = True,
        evaluation: Evaluation | None = None,
    ):
        super().__init__()
        if pool is None and not simulated:
            raise ValueError("live online DPO needs a reward-model `pool`; only `simulated: true` runs without one")
        if not isinstance(router, Router):
            raise TypeError(f"router must be a Router (configs/routers/<method>.yaml), got {type(router).__name__}")
        if num_samples < 2 and not simulated:
            raise ValueError(f"num_samples must be >= 2 to form a pair, got {num_samples}")
        self.save_hyperparameters(ignore=["pool", "router", "optimizer", "lr_scheduler", "evaluation"])
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.strict_loading = False  # checkpoints hold the trained weights only (on_save_checkpoint)
        self.router = router
        self.evaluation = evaluation
        # A plain list keeps the pool out of nn.Module registration: not in state_dict, checkpoints or the optimizer.
        self._pool: list[RewardModelPool] = [pool] if pool is not None else []
        self._pool_judge: PairJudge | None = None  # built once (`live_judge`): it counts RM errors over the run
        self.policy = None
        self.reference = None
        self.tokenizer = None
        self._keeps_logits = False
        self._step_values: dict[str, float] = {}  # this step's logged values, returned to callbacks
        self._trained_pairs = 0  # this step's, for on_before_optimizer_step

    @property
    def pool(self) -> RewardModelPool | None:
        return self._pool[0] if self._pool else None

    def configure_callbacks(self) -> list[Router]:
        self._connect_router()  # before any hook of the router runs: its names make its checkpoint key
        return [self.router]

    def _connect_router(self) -> None:
        """Hands the router the RM names it routes over: the pool's, or in simulated mode the behaviour file's RMs
        (the datamodule's `rm_names`). A router given its own `rm_names` must have exactly those."""
        if self.pool is not None:
            self.router.connect_pool(self.pool.names, "the pool's", self.pool.costs)
            return
        names = getattr(getattr(self._trainer, "datamodule", None), "rm_names", None)
        if names is not None:
            self.router.connect_pool(names, "the behaviour file's (data.init_args.rm_names)")

    def setup(self, stage: str) -> None:
        if self.pool is not None:
            self.pool.to(self.trainer.strategy.root_device)
        self._connect_router()  # again, for a router set after configure_callbacks (idempotent)

    def configure_model(self) -> None:
        # Idempotent: Lightning may call it again (e.g. after loading a checkpoint into an existing module).
        if self.policy is not None:
            return
        from rmrouter.models.store import load_tokenizer

        self.tokenizer = load_tokenizer(self.hparams.policy)
        # In the default dtype (float32, or bfloat16 under bf16-true, which sets it here): a checkpoint stored in bf16
        # would otherwise load as bf16 next to peft's float32 adapter, and FSDP refuses to flatten mixed dtypes.
        self.policy, self.reference = build_policy(self.hparams.policy, self.hparams.lora, torch.get_default_dtype())
        self._keeps_logits = gen.keeps_logits(self.policy)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only what training changes: configure_model rebuilds the frozen rest from `policy` (policy/checkpoint.py).
        keep_trainable_weights(checkpoint, self._trainable_names())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_trainable_weights(checkpoint, self._trainable_names())

    def _trainable_names(self) -> set[str]:
        return trainable_names(self.named_parameters())

    def configure_optimizers(self):
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        optimizer = self.optimizer(params)
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "step"}}

    def evaluated_models(self) -> tuple[Generate, Generate, str]:
        """The trained policy's greedy answers, and its starting point's (the adapter off, or the reference)."""
        batch_size = self._require_evaluation().batch_size
        policy = no_grad_generate(self.policy, self.tokenizer, batch_size)
        start = starting_policy_generate(self.policy, self.reference, self.tokenizer, batch_size)
        return policy, start, f"{self.hparams.policy}|{self.trainer.precision}"

    def evaluation_title(self) -> str:
        return f"Downstream evaluation: {self.hparams.policy} after online DPO with {type(self.router).__name__}"

    def live_judge(self) -> PairJudge:
        """The pool's judge, built once and kept so its per-RM error counts (`train/rm_errors/<rm>`) cover the whole
        run; imported here so tests can replace this method without the routers package."""
        if self._pool_judge is None:
            from rmrouter.routers.judges import PoolJudge

            self._pool_judge = PoolJudge(self.pool)
        return self._pool_judge

    def recorded_judge(self, scores: Tensor) -> PairJudge:
        from rmrouter.routers.judges import RecordedJudge

        return RecordedJudge(scores)

    def _seed_global_rng(self, draw: int) -> None:
        """Seeds torch's global RNG (CPU and CUDA) from `(seed, step, rank, draw)` right before a draw from it.

        Sampling (`generate`) and dropout draw from the global RNG, which Lightning does not checkpoint, and which the
        loader's iterators and lazily built models (a router's embedder on its first call) draw from as well, so after
        a resume its state differs from an uninterrupted run's. Seeded here, each of a step's draws is a function of
        the step alone: a run resumed from a checkpoint samples and drops out exactly as an uninterrupted one.
        """
        torch.manual_seed(((self.hparams.seed * 1_000_003 + self.global_step) * 1_009 + self.global_rank) * 2 + draw)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + self.global_step)

    def _candidates(self, batch) -> tuple[Candidates, list | None]:
        hp, tokenizer = self.hparams, self.tokenizer
        if hp.simulated:
            eos = min(gen.eos_ids(self.policy, tokenizer))
            candidates = simulated_candidates(
                batch,
                self._generator(),
                lambda prompt: gen.prompt_ids(tokenizer, [prompt], hp.max_prompt_length)[0],
                lambda text: gen.text_ids(tokenizer, text, eos, hp.max_new_tokens),
                self.recorded_judge,
            )
            return candidates, None
        prompts = gen.prompt_ids(tokenizer, [record.prompt for record in batch], hp.max_prompt_length)
        self._seed_global_rng(0)
        completions = gen.sample_completions(
            self.policy, tokenizer, prompts, hp.num_samples, hp.max_new_tokens, hp.temperature, hp.top_p,
            hp.share_prompts,
        )  # fmt: skip
        judge = LiveJudge(self.live_judge(), hp.missing_eos_penalty, hp.min_score_gap, len(self.pool))
        candidates = live_candidates(
            batch, prompts, completions, hp.pairing, hp.pairs_per_prompt, self._generator(), judge
        )
        return candidates, completions

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def training_step(self, batch, batch_idx: int) -> dict[str, Any]:
        """One online step. Returns the loss and what callbacks read in `on_train_batch_end` (`outputs`):

        - `step_values`: every value this step logged, by name (a value not logged this step is absent);
        - `routing`: this rank's `(domain, chosen RM index)` per routed pair (-1: no single RM);
        - `labelling`: simulated mode only, this rank's `(domains, correct)` per routed pair, else None;
        - `losses`: `[P]` the per-pair DPO losses the router observed (NaN: not trained on).
        """
        self._step_values = {}
        candidates, completions = self._candidates(batch)
        # route -> label -> DPO -> observe, before the optimizer step, so the router's reward `-L_DPO` is measured on
        # the policy it routed for (the same order as every simulated stream, `rmrouter.simulation.loop`)
        routing = self.router.route(candidates.pairs, candidates.judge)
        preference = routing.preference.detach().float().cpu()
        dpo = self._dpo_on_labels(candidates, preference)
        self.router.observe(routing, dpo.losses)
        pairs = self._trained_pairs = dpo.pairs_trained
        loss = dpo.output.losses.mean() if pairs else self._idle_loss(dpo.policy_logps)
        self._log("train/pairs", float(pairs))
        self._log("train/candidate_pairs", float(len(preference)))
        if completions is not None:
            log_completions(self._log, completions, self.live_judge())
            log_samples(self.logger, batch, completions, self.global_step, self.hparams.log_text_every_n_steps)
        labelling = log_labelling(self._log, candidates, preference) if candidates.truth is not None else None
        for name, value in self.router.metrics().items():
            self._log(name, float(value))
        return {
            "loss": loss,
            "step_values": dict(self._step_values),
            "routing": list(zip(candidates.pairs.domains, routing.rm_index.tolist(), strict=True)),
            "labelling": labelling,
            "losses": dpo.losses,
        }

    def _dpo_on_labels(self, candidates: Candidates, preference: Tensor) -> DPOStep:
        """DPO on the routed labels: every labelled pair, or with best-vs-worst pairing one per prompt."""
        if self.hparams.pairing == "best_vs_worst" and not self.hparams.simulated:
            rows = best_vs_worst_rows(candidates.groups, candidates.indices, preference)
        else:
            rows = preference.nonzero().flatten().tolist()
        if rows:
            self._seed_global_rng(1)  # dropout
        dpo = dpo_on_labels(
            self.policy,
            self.reference,
            candidates.pairs,
            rows,
            preference,
            pad_id=self._pad_id(),
            beta=self.hparams.beta,
            loss_type=self.hparams.loss_type,
            keep_logits=self._keeps_logits,
            share_prompts=self.hparams.share_prompts,
        )
        if dpo.pairs_trained:
            log_dpo(self._log, dpo.output, *dpo.trained_sides())
        return dpo

    def _idle_loss(self, policy: Tensor | None) -> Tensor:
        """The loss of a step with no usable pair: 0, never the NaN of a mean over nothing, with a grad path to every
        trainable weight (DDP reduces every gradient). on_before_optimizer_step then keeps the weights as they are.

        Under several processes a rank that ran no DPO forward runs one on a dummy row: FSDP gathers each layer's
        weights inside the forward, so a rank that skipped it would leave the others waiting.
        """
        if policy is not None:
            return (policy * 0.0).nansum()  # the forward ran; its NaN rows (if any) count 0, not NaN
        if self.trainer.world_size > 1:
            token = min(gen.eos_ids(self.policy, self.tokenizer))
            average = self.hparams.loss_type == "ipo"
            logps = gen.policy_and_reference_logprobs(
                self.policy, self.reference, [[token]], [[token]], self._pad_id(), average, self._keeps_logits,
                self.hparams.share_prompts,
            )[0]  # fmt: skip
            return logps.sum() * 0.0
        return sum(p.sum() for p in self.policy.parameters() if p.requires_grad) * 0.0

    def on_before_optimizer_step(self, optimizer) -> None:
        # No trained pair on any rank, or a non-finite gradient on any rank (NaN inside the network reaches every
        # weight's gradient), and the step leaves the weights as they are: gradients of None make AdamW skip every
        # parameter, so neither its momentum nor its weight decay moves them. Decided over all ranks, so they agree.
        grads = [p.grad for p in self.trainer.model.parameters() if p.grad is not None]
        nonfinite = bool(grads) and not bool(torch.stack([g.isfinite().all() for g in grads]).all())
        idle = self._trained_pairs == 0
        strategy = self.trainer.strategy
        skip = strategy.reduce_boolean_decision(nonfinite, all=False) or strategy.reduce_boolean_decision(
            idle, all=True
        )
        if skip:
            optimizer.zero_grad(set_to_none=True)
        self._log("train/skipped_step", float(skip))

    def _log(self, name: str, value: float | Tensor) -> None:
        self.log(name, value, on_step=True, on_epoch=False, batch_size=1, prog_bar=name in PROGRESS_BAR)
        # This step's values only (the trainer's metric dicts keep earlier steps' keys), for callbacks such as the
        # closing summary.
        self._step_values[name] = float(value)
