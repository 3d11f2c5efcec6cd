"""Numeric precision: what each variant runs in, and what this CPU can run.

A variant is an artifact with a stated precision (`project.precision` in its `config.pbtxt`):

    fp32   FP32 weights and arithmetic on every engine and CPU
    bf16   the FP32 file, run by OpenVINO with INFERENCE_PRECISION_HINT bf16; offered only on
           CPUs with AMX-BF16 or AVX512-BF16 (elsewhere OpenVINO would quietly run FP32)
    int8   a QDQ-quantized file: the quantized operators in INT8, the rest in FP32

Engines are told the precision explicitly: OpenVINO's CPU plugin otherwise runs an FP32
model in BF16 on CPUs with AMX, and "fp32" would mean two different things.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "int8")

# /proc/cpuinfo flags that decide how fast (or whether) a precision runs, with their names.
ISA_FLAGS: dict[str, str] = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "amx_fp16": "AMX-FP16",
}
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


# What each variant's engines run it in, as cards and /v1/models state it.
DESCRIPTIONS: dict[Precision, str] = {
    "fp32": "FP32 on ONNX Runtime and on OpenVINO (INFERENCE_PRECISION_HINT f32), on every CPU",
    "bf16": "BF16 on OpenVINO (INFERENCE_PRECISION_HINT bf16), on CPUs with AMX-BF16 or "
    "AVX512-BF16 only",
    "int8": "INT8 in the quantized (QDQ) operators, FP32 elsewhere (OpenVINO "
    "INFERENCE_PRECISION_HINT f32)",
}


class CpuInfo(BaseModel):
    """The CPU a figure was measured on, or a model is served on."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(description="/proc/cpuinfo model name (or the platform's processor).")
    isa: tuple[str, ...] = Field(
        default=(), description="The instruction sets of ISA_FLAGS this CPU has, by name."
    )
    cores: int = Field(default=0, ge=0, description="Logical cores the OS reports.")

    @property
    def bf16(self) -> bool:
        """Native BF16 arithmetic (what OpenVINO needs to run a bf16 variant in BF16)."""
        return any(ISA_FLAGS[flag] in self.isa for flag in BF16_FLAGS)

    def describe(self) -> str:
        """One line, as benchmarks and cards print it."""
        missing = [
            name for name in ("AVX-512", "AVX512-VNNI", "AMX-BF16", "AMX-INT8") if name not in self
        ]
        flags = ", ".join(self.isa) or "no AVX2"
        if missing:
            flags += "; no " + ", ".join(missing)
        return f"{self.model} ({flags}), {self.cores} logical cores"

    def __contains__(self, name: object) -> bool:
        return name in self.isa

    def same_as(self, other: CpuInfo) -> bool:
        return self.model == other.model and set(self.isa) == set(other.isa)


def read_cpu(cpuinfo: str | None = None) -> CpuInfo:
    """This machine's CPU from /proc/cpuinfo (`cpuinfo` text for tests)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or platform.machine(), set[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name":
            model = value.strip()
        elif key == "flags":
            flags = set(value.split())
            break  # every core lists the same flags
    isa = tuple(name for flag, name in ISA_FLAGS.items() if flag in flags)
    return CpuInfo(model=model, isa=isa, cores=os.cpu_count() or 0)


@functools.cache
def this_cpu() -> CpuInfo:
    return read_cpu()


def bf16_unavailable(cpu: CpuInfo | None = None) -> str | None:
    """Why this CPU cannot run a bf16 variant, or None when it can."""
    cpu = cpu or this_cpu()
    if cpu.bf16:
        return None
    return (
        f"this CPU ({cpu.model}) has neither AMX-BF16 nor AVX512-BF16, so BF16 would run as "
        "FP32 (or emulated); bf16 variants are offered on CPUs that have one of them"
    )


def unavailable(precision: Precision, cpu: CpuInfo | None = None) -> str | None:
    """Why this CPU cannot run `precision` as stated, or None."""
    return bf16_unavailable(cpu) if precision == "bf16" else None
