"""Samplers sharing one unmasking core (`core.py`).

Every sampler is called as

    result = SAMPLERS[name](reverse, rng, num_samples, settings, known)

with a `core.Reverse` (the model), a `core.Settings`, optional
`core.Known` tokens, and returns a `core.Result` (samples, network calls,
history frames).

| name | what | exact |
|---|---|---|
| ancestral | reverse process on a time grid (`ancestral.py`) | T-step |
| topp | ancestral on the nucleus of mu | no |
| mean | ancestral drawn in two steps: reveal?, then value | T-step |
| confidence | MaskGIT: reveal the most confident tokens | no |
| remask | ReMDM remasking with `remask_strength` | T-step |
| cached | ancestral, network called only at reveal steps (MD4) | T-step |
| first_hitting | one token per call at its exact time (MD4) | yes |
"""

from md4.sampling import ancestral
from md4.sampling import cached
from md4.sampling import confidence
from md4.sampling import first_hitting
from md4.sampling import remask

SAMPLERS = {
    "ancestral": ancestral.sample_ancestral,
    "topp": ancestral.sample_topp,
    "mean": ancestral.sample_mean,
    "confidence": confidence.sample_confidence,
    "remask": remask.sample_remask,
    "cached": cached.sample_cached,
    "first_hitting": first_hitting.sample_first_hitting,
}
NAMES = tuple(SAMPLERS)
# Samplers that need a value-independent schedule alpha(t) (MD4, not GenMD4).
MD4_ONLY = ("remask", "cached", "first_hitting")


def get(name: str):
  """The sampler function called `name`, or a ValueError listing them."""
  if name not in SAMPLERS:
    raise ValueError(f"--sampler={name!r} is not a sampler; valid: "
                     f"{', '.join(NAMES)}.")
  return SAMPLERS[name]
