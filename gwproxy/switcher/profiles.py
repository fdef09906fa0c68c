"""Profiles: one YAML file per model (``profiles/<id>.yml``) → a validated, frozen ``Profile``.

A profile says which model vLLM serves and how it is started (image or command, dtype or
quantization, ``max_model_len``, ``gpu_memory_utilization``, tensor parallel, extra flags), and
what the model needs (its architecture numbers, for the planner). ``load_profiles`` reads a
directory; a file that does not validate is reported as a ``ProfileProblem`` (file, field,
reason) and leaves the others loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

# Bytes per weight for each dtype or quantization the planner knows.
WEIGHT_BYTES: Mapping[str, float] = {
    "bfloat16": 2.0,
    "float16": 2.0,
    "float32": 4.0,
    "fp8": 1.0,
    "awq": 0.5,
    "gptq": 0.5,
    "bitsandbytes": 0.5,
}
DTYPES = ("bfloat16", "float16", "float32", "auto")
QUANTIZATIONS = ("fp8", "awq", "gptq", "bitsandbytes")
KV_DTYPES = ("auto", "fp8")


@dataclass(frozen=True, slots=True)
class Architecture:
    parameters_b: float  # billions of parameters
    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    context: int  # native context length in tokens


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    name: str
    model: str  # Hugging Face id (or a local path inside the container)
    served_names: tuple[str, ...]
    architecture: Architecture
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    tensor_parallel: int | None = None  # None = auto
    weights_gib: float | None = None  # measured checkpoint size, when the estimate is not good enough
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    image: str | None = None  # docker backend; None = switch.docker_image
    command: tuple[str, ...] | None = None  # process backend; None = switch.process_command
    startup_timeout: float = 900.0
    default: bool = False
    description: str = ""
    ttl: float = 0.0  # on demand: unloaded after this many idle seconds (0: kept until evicted)
    pinned: bool = False  # on demand: never evicted
    swappable: bool = True  # on demand: false = never evicted for another model (keeps its prefix cache warm)
    sleep_level: int = 0  # on demand: evicted by vLLM's sleep (1: weights to host RAM, 2: dropped) before stopping
    source: str = field(default="", compare=False)  # the file it came from

    @property
    def served_name(self) -> str:
        return self.served_names[0]

    @property
    def weight_format(self) -> str:
        """What decides bytes per weight: the quantization, else the dtype (``auto`` = bf16)."""
        if self.quantization:
            return self.quantization
        return "bfloat16" if self.dtype == "auto" else self.dtype

    def vllm_args(self, host: str, port: int, tensor_parallel: int, utilization: float | None = None) -> list[str]:
        """vLLM OpenAI-server arguments for this profile (also understood by ``gwproxy sim``);
        ``utilization`` replaces the profile's share of GPU memory (a model sharing its GPUs)."""
        args = ["--model", self.model, "--served-model-name", *self.served_names]
        args += ["--host", host, "--port", str(port)]
        args += ["--dtype", self.dtype, "--max-model-len", str(self.max_model_len)]
        args += ["--gpu-memory-utilization", f"{utilization or self.gpu_memory_utilization:g}"]
        args += ["--tensor-parallel-size", str(tensor_parallel)]
        if self.quantization:
            args += ["--quantization", self.quantization]
        if self.kv_cache_dtype != "auto":
            args += ["--kv-cache-dtype", self.kv_cache_dtype]
        if self.sleep_level:
            args += ["--enable-sleep-mode"]
        return args + list(self.extra_args)

    def public(self) -> dict[str, Any]:
        a = self.architecture
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "served_names": list(self.served_names),
            "default": self.default,
            "architecture": {
                "parameters_b": a.parameters_b,
                "layers": a.layers,
                "attention_heads": a.attention_heads,
                "kv_heads": a.kv_heads,
                "head_dim": a.head_dim,
                "context": a.context,
            },
            "dtype": self.dtype,
            "quantization": self.quantization,
            "kv_cache_dtype": self.kv_cache_dtype,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel": self.tensor_parallel or "auto",
            "extra_args": list(self.extra_args),
            "ttl": self.ttl,
            "pinned": self.pinned,
            "swappable": self.swappable,
            "sleep_level": self.sleep_level,
        }


class TensorParallel(fields.Field[int | None]):
    """``auto`` or a positive power of two."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int | None:
        if value == "auto":
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0 and value & (value - 1) == 0:
            return value
        raise ValidationError("must be 'auto' or a power of two (1, 2, 4, 8)")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ArchitectureSchema(_Strict):
    parameters_b = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    layers = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    attention_heads = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    kv_heads = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    head_dim = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    context = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))

    @validates_schema
    def _heads(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["attention_heads"] % data["kv_heads"]:
            raise ValidationError("must divide attention_heads", "kv_heads")


class ProfileSchema(_Strict):
    name = fields.String(required=True, validate=validate.Length(min=1))
    description = fields.String(load_default="")
    model = fields.String(required=True, validate=validate.Length(min=1))
    served_names = fields.List(
        fields.String(validate=validate.Length(min=1)), required=True, validate=validate.Length(min=1)
    )
    architecture = fields.Nested(ArchitectureSchema, required=True)
    dtype = fields.String(load_default="auto", validate=validate.OneOf(DTYPES))
    quantization = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(QUANTIZATIONS))
    kv_cache_dtype = fields.String(load_default="auto", validate=validate.OneOf(KV_DTYPES))
    max_model_len = fields.Integer(strict=True, required=True, validate=validate.Range(min=16))
    gpu_memory_utilization = fields.Float(load_default=0.9, validate=validate.Range(min=0.05, max=0.99))
    tensor_parallel = TensorParallel(load_default=None)  # absent = auto
    weights_gib = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    extra_args = fields.List(fields.String(), load_default=list)
    env = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    image = fields.String(load_default=None, allow_none=True)
    command = fields.List(fields.String(), load_default=None, allow_none=True, validate=validate.Length(min=1))
    startup_timeout = fields.Float(load_default=900.0, validate=validate.Range(min=1))
    default = fields.Boolean(load_default=False)
    ttl = fields.Float(load_default=0.0, validate=validate.Range(min=0))
    pinned = fields.Boolean(load_default=False)
    swappable = fields.Boolean(load_default=True)
    sleep_level = fields.Integer(strict=True, load_default=0, validate=validate.OneOf([0, 1, 2]))

    @validates_schema
    def _context(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["max_model_len"] > data["architecture"]["context"]:
            raise ValidationError(
                f"{data['max_model_len']} exceeds the model's native context ({data['architecture']['context']})",
                "max_model_len",
            )


@dataclass(frozen=True, slots=True)
class ProfileProblem:
    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}"


def _first_error(messages: Any, path: str = "") -> tuple[str, str]:
    if isinstance(messages, dict):
        key, value = next(iter(messages.items()))
        return _first_error(value, f"{path}.{key}" if path else str(key))
    if isinstance(messages, list) and messages:
        if isinstance(messages[0], dict | list):
            return _first_error(messages[0], path)
        return path or "-", str(messages[0])
    return path or "-", str(messages)


def parse_profile(profile_id: str, data: Any, source: str = "") -> Profile:
    """Validate one profile's mapping; raises ``ValidationError``."""
    if not isinstance(data, dict):
        raise ValidationError({"-": ["the file must hold a YAML mapping"]})
    loaded = ProfileSchema().load(data)
    arch = Architecture(**loaded.pop("architecture"))
    command = loaded.pop("command")
    return Profile(
        id=profile_id,
        architecture=arch,
        served_names=tuple(loaded.pop("served_names")),
        extra_args=tuple(loaded.pop("extra_args")),
        env=tuple(sorted(loaded.pop("env").items())),
        command=tuple(command) if command is not None else None,
        source=source,
        **loaded,
    )


@dataclass(frozen=True, slots=True)
class ProfileSet:
    profiles: Mapping[str, Profile]
    problems: tuple[ProfileProblem, ...] = ()

    @property
    def default(self) -> Profile | None:
        for p in self.profiles.values():
            if p.default:
                return p
        return next(iter(self.profiles.values()), None)

    def by_served_name(self, name: str) -> Profile | None:
        for p in self.profiles.values():
            if name in p.served_names:
                return p
        return None


def load_profiles(directory: Path) -> ProfileSet:
    """Every ``*.yml``/``*.yaml`` in ``directory``, by id (the file's stem), sorted by id."""
    profiles: dict[str, Profile] = {}
    problems: list[ProfileProblem] = []
    files = sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")]) if directory.is_dir() else []
    for path in files:
        try:
            data = yaml.safe_load(path.read_text())
            profiles[path.stem] = parse_profile(path.stem, data, str(path))
        except yaml.YAMLError as exc:
            problems.append(ProfileProblem(path.name, "-", f"not valid YAML: {exc}".replace("\n", " ")))
        except ValidationError as exc:
            problems.append(ProfileProblem(path.name, *_first_error(exc.messages)))
        except OSError as exc:
            problems.append(ProfileProblem(path.name, "-", f"cannot be read: {exc.strerror}"))
    defaults = [p.id for p in profiles.values() if p.default]
    if len(defaults) > 1:
        problems.append(ProfileProblem(", ".join(defaults), "default", "more than one profile says default: true"))
    return ProfileSet(profiles, tuple(problems))
