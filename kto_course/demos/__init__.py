"""Thin ipywidgets wrappers around ``figures``: controls in, a plot and a readout out.

Every demo is built by ``make_demo`` (in ``base``, with the course's ``slider``): it returns a
VBox whose ``controls`` (name -> widget), ``readout`` (an HTML widget with the numbers) and
``plot`` (an ipympl canvas showing ``figure``) can be driven from Python (set ``.value``, read
the readout) as well as in the browser. One module per lesson, in teaching order; every module's
public names (its ``__all__``) are re-exported here, so that a notebook writes ``demos.x()``.
"""

from kto_course.demos.base import *  # noqa: F403
from kto_course.demos.l01_log_ratio import *  # noqa: F403
from kto_course.demos.l02_kl_reference_point import *  # noqa: F403
from kto_course.demos.l03_value_and_loss import *  # noqa: F403
from kto_course.demos.l04_gradients_and_saturation import *  # noqa: F403
from kto_course.demos.l05_kto_vs_dpo import *  # noqa: F403
from kto_course.demos.l06_tiny_gpt2_kto import *  # noqa: F403
