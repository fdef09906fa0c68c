"""Switcher: which model vLLM serves, and swapping it safely.

``profiles`` (YAML → validated ``Profile``), ``hardware`` (NVML / nvidia-smi / a configured
snapshot), ``planner`` (pure: fit, tensor parallel, recommendations), ``gate`` (holds /v1
requests while a switch runs), backends ``containers`` (Docker through aiodocker) and
``processes`` (a local command), ``switcher`` (the single owner of the running model and its
job state machine) and ``routes`` (``/api/models/*``).
"""
