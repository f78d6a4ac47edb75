"""Pure functions that compute and draw what the demos show, from plain parameters.

No widgets here: each function takes numbers, returns a matplotlib Figure and/or plain values,
and can be tested without a browser; ``kto_course.demos`` wires controls to them. ``base`` holds
what the lessons share, then one module per lesson, in teaching order. Every module's public
names (its ``__all__``) are re-exported here, so that a notebook writes ``figures.x(...)``.
"""

from kto_course.figures.base import *  # noqa: F403
from kto_course.figures.l01_log_ratio import *  # noqa: F403
from kto_course.figures.l02_kl_reference_point import *  # noqa: F403

# Private, for the tests: the fixed draws, and the estimates checked against core.z0_estimate.
from kto_course.figures.l02_kl_reference_point import _Z0_DRAWS, _z0_estimates  # noqa: F401
from kto_course.figures.l03_value_and_loss import *  # noqa: F403
from kto_course.figures.l04_gradients_and_saturation import *  # noqa: F403
from kto_course.figures.l05_kto_vs_dpo import *  # noqa: F403
from kto_course.figures.l06_tiny_gpt2_kto import *  # noqa: F403
from kto_course.figures.l07_graduate_to_trl import *  # noqa: F403
