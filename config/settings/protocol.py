"""The Llama 2 preference protocol (Touvron et al. 2023, §3.2.1) as documented, configurable defaults.

Each value names where it comes from: the paper, or our own choice where the paper is silent.
"""

from config.env import env_float_list, env_int, env_str

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
# The sampler that produces response pairs for prompt-mode tasks (dotted path to a class).
LADDER_SAMPLER = env_str("LADDER_SAMPLER", "models_core.sampling.DeterministicDemoSampler")
