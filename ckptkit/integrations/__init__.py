"""Integrations with other training libraries: each module imports its library, the core never does.

- :mod:`ckptkit.integrations.hf`: exact, verified resume for Hugging Face ``Trainer`` (extra ``hf``).
"""
