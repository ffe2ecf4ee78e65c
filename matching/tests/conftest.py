"""Hypothesis profiles for the engine property tests: "ci" when CI is set, else "dev".

HYPOTHESIS_PROFILE overrides the choice.
"""

import os

from hypothesis import settings

settings.register_profile(
    "ci", max_examples=300, deadline=None, derandomize=True, stateful_step_count=40
)
settings.register_profile("dev", max_examples=40, deadline=None, stateful_step_count=40)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)
