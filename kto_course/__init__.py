"""kto_course: the helper package of the KTO course.

Modules in teaching order: ``core`` (the math in NumPy), ``torch_ops`` (the same in PyTorch),
``figures`` and ``demos`` (what the demos show, and their widgets), ``checks`` (the exercises'
self-checks), ``toy`` (lesson 05's softmax-policy problem), ``lm`` (the tiny GPT-2 and its
task), ``train`` (the KTO fine-tune), ``grading`` and ``cli`` (the ``kto-course`` command), and
``system`` (device, threads, browser).
"""

__version__ = "0.1.0"
