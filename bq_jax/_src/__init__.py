"""Internals shared by several sub-packages (the ``_src`` habit of optax and qwix).

Nothing here is public API: import these modules by name from inside ``bq_jax`` only. They import
nothing else of the project's, so every sub-package above ``quant`` may use them.
"""
