"""The Llama 2 preference protocol (Touvron et al. 2023, §3.2.1) as documented, configurable defaults.

Each value names where it comes from: the paper, or our own choice where the paper is silent.
"""

from config.env import env_bool, env_choice, env_float, env_float_list, env_int, env_str

# Distinct annotators per comparison task. The paper does not say; it appears to be one (§3.2.1).
LADDER_DEFAULT_OVERLAP = env_int("LADDER_DEFAULT_OVERLAP", 1, minimum=1)
# Comparisons held out per weekly batch as the reward-model test set: "we held out 1000 examples" (§3.2.2).
LADDER_HELDOUT_PER_BATCH = env_int("LADDER_HELDOUT_PER_BATCH", 1000, minimum=0)
# How long a claimed task stays reserved for its annotator before it is reclaimed (ours).
LADDER_LEASE_MINUTES = env_int("LADDER_LEASE_MINUTES", 10, minimum=1)
# Longest prompt an annotator may write, in characters (ours).
LADDER_PROMPT_MAX_CHARS = env_int("LADDER_PROMPT_MAX_CHARS", 8000, minimum=1)
LADDER_NOTE_MAX_CHARS = env_int("LADDER_NOTE_MAX_CHARS", 2000, minimum=0)
# "varying the temperature hyper-parameter" (§3.2.1); the values are not in the paper.
LADDER_DEFAULT_TEMPERATURES = env_float_list("LADDER_DEFAULT_TEMPERATURES", [0.7, 1.0])
# Sampling defaults of a new batch (not in the paper).
LADDER_DEFAULT_TOP_P = env_float("LADDER_DEFAULT_TOP_P", 0.9, minimum=0.0)
LADDER_DEFAULT_MAX_NEW_TOKENS = env_int("LADDER_DEFAULT_MAX_NEW_TOKENS", 256, minimum=1)
# Optional system prompt for sampling (Llama 2 chat format); empty for none.
LADDER_SYSTEM_PROMPT = env_str("LADDER_SYSTEM_PROMPT", "")
# A prompt longer than the model's context: "truncate" (from the left, noted on the task) or "refuse".
LADDER_CONTEXT_OVERFLOW = env_choice("LADDER_CONTEXT_OVERFLOW", "truncate", ["truncate", "refuse"])
# Samplers: a dotted path to a callable returning a ResponseSampler. LADDER_SAMPLER serves checkpoints
# with a path (real models, kept loaded by each worker). LADDER_DEMO_SAMPLER is the deterministic stand-in
# (not a language model) for checkpoints without a path, and for batches when no policy is registered; empty
# (the default): no stand-in, such checkpoints are refused at registration and such pairs are refused.
# The test settings name it; the production settings refuse to start with it.
LADDER_SAMPLER = env_str("LADDER_SAMPLER", "annotation.generation.policy_sampler")
LADDER_DEMO_SAMPLER = env_str("LADDER_DEMO_SAMPLER", "")
# Models a worker keeps loaded at once (one per checkpoint, least recently used evicted).
LADDER_SAMPLER_MAX_MODELS = env_int("LADDER_SAMPLER_MAX_MODELS", 2, minimum=1)
# Where and in what precision workers run policies: "auto" is CUDA with bf16 where present, else CPU fp32.
LADDER_SAMPLER_DEVICE = env_str("LADDER_SAMPLER_DEVICE", "auto")
LADDER_SAMPLER_DTYPE = env_choice("LADDER_SAMPLER_DTYPE", "auto", ["auto", "float32", "bfloat16", "float16"])
# How many pending tasks one sampling job takes together (prompts batched across tasks).
LADDER_SAMPLING_BATCH_SIZE = env_int("LADDER_SAMPLING_BATCH_SIZE", 16, minimum=1)
# A worker's claim on a task while it samples; a killed worker's tasks are taken up again after this.
LADDER_SAMPLING_CLAIM_SECONDS = env_int("LADDER_SAMPLING_CLAIM_SECONDS", 600, minimum=1)
# Attempts after a failed generation before the task is marked failed.
LADDER_SAMPLING_MAX_RETRIES = env_int("LADDER_SAMPLING_MAX_RETRIES", 3, minimum=0)
# A task sent to the sampling queue and never taken up is sent again after this long, once per send, and only
# while the sampling queue is empty (its message was lost, e.g. the broker was flushed; a task merely waiting
# in a long queue is never sent twice). A task whose worker died is sent again once its claim lapses.
LADDER_SAMPLING_RESEND_SECONDS = env_int("LADDER_SAMPLING_RESEND_SECONDS", 300, minimum=1)
# Queue refill: unlabelled pairs kept ready per open batch with a prompt pool (a batch may override).
LADDER_QUEUE_MIN_READY = env_int("LADDER_QUEUE_MIN_READY", 20, minimum=0)
LADDER_QUEUE_REFILL_SECONDS = env_int("LADDER_QUEUE_REFILL_SECONDS", 30, minimum=1)
# Where bootstrap_policy writes its checkpoint.
LADDER_CHECKPOINT_DIR = env_str("LADDER_CHECKPOINT_DIR", ".local/checkpoints")
# A sampling worker loads the current policy when it starts, so the first prompt does not wait for the load.
LADDER_SAMPLER_PRELOAD = env_bool("LADDER_SAMPLER_PRELOAD", True)
# PyTorch threads per sampling process; 0 keeps PyTorch's default (one per core). On a machine whose cores are
# shared (several workers, or a web server busy beside one), 1 avoids threads waiting on each other.
LADDER_SAMPLER_THREADS = env_int("LADDER_SAMPLER_THREADS", 0, minimum=0)

# Quality assurance (annotation.services.gold / flags / review). The paper reviews labels in a QA step but gives
# no numbers for it (§3.2.1, §4.2): these are our defaults.
# Share of served tasks that are gold checks, where a batch has gold items (each batch can override it).
LADDER_GOLD_RATE = env_float("LADDER_GOLD_RATE", 0.05, minimum=0.0)
# An annotator is flagged when their gold accuracy falls below this, once they answered LADDER_GOLD_MIN_CHECKS.
LADDER_GOLD_MIN_ACCURACY = env_float("LADDER_GOLD_MIN_ACCURACY", 0.7, minimum=0.0)
LADDER_GOLD_MIN_CHECKS = env_int("LADDER_GOLD_MIN_CHECKS", 5, minimum=1)
# A label submitted sooner than this after the lease began counts as too fast to have read both responses...
LADDER_MIN_SECONDS_ON_TASK = env_float("LADDER_MIN_SECONDS_ON_TASK", 4.0, minimum=0.0)
# ... and the annotator is flagged when more than this share of their labels are too fast.
LADDER_TOO_FAST_SHARE = env_float("LADDER_TOO_FAST_SHARE", 0.3, minimum=0.0)
# Side bias: flagged when a two-sided binomial test of left choices against 1/2 gives p below this.
LADDER_SIDE_BIAS_P = env_float("LADDER_SIDE_BIAS_P", 0.001, minimum=0.0)
# The rate rules (too fast, side bias) judge an annotator once they have this many labels in the batch.
LADDER_QUALITY_MIN_LABELS = env_int("LADDER_QUALITY_MIN_LABELS", 20, minimum=1)
# A flag pauses the annotator in that batch until an admin lifts it.
LADDER_QUALITY_AUTO_PAUSE = env_bool("LADDER_QUALITY_AUTO_PAUSE", True)
# Share of each batch's labels drawn (deterministically) into the review queue beside flagged and disputed ones.
LADDER_REVIEW_SAMPLE_RATE = env_float("LADDER_REVIEW_SAMPLE_RATE", 0.05, minimum=0.0)
# Quality dashboards: a batch's numbers are computed whole (agreement and Table 6 read every label) and kept as a
# snapshot. "worker": a view that finds the labels changed since the snapshot shows it at once, marked with its
# time, and asks a worker (queue default) to refresh it; "inline": the view recomputes before answering (slow on
# large batches; for setups without workers).
LADDER_DASHBOARD_REFRESH = env_choice("LADDER_DASHBOARD_REFRESH", "worker", ["worker", "inline"])
# A batch with no snapshot yet and at least this many labels is not computed while the viewer waits: the page
# shows its progress and a placeholder that fills in when a worker has computed it (the API answers 202).
# Smaller batches are computed in place (well under 500 ms below this size on a 2-core machine).
LADDER_DASHBOARD_INLINE_LABELS = env_int("LADDER_DASHBOARD_INLINE_LABELS", 10_000, minimum=0)
# Every this many seconds Celery beat asks the workers to refresh each batch snapshot that is missing or older
# than the batch's labels (one grouped query over all batches; each refresh reads the batch's labels).
LADDER_DASHBOARD_SWEEP_SECONDS = env_int("LADDER_DASHBOARD_SWEEP_SECONDS", 60, minimum=5)
