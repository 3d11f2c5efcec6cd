from runners.precision import CpuInfo, bf16_unavailable, read_cpu

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 \
avx512_fp16 amx_bf16 amx_tile amx_int8
"""
EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx f16c avx2 fma
"""


def test_an_amx_cpu_has_bf16_and_says_which_instruction_sets() -> None:
    cpu = read_cpu(SAPPHIRE_RAPIDS)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert cpu.bf16
    assert {"AVX2", "AVX-512", "AVX512-VNNI", "AVX512-BF16", "AMX-BF16", "AMX-INT8"} <= set(cpu.isa)
    assert "AMX-BF16" in cpu.describe()
    assert "; no" not in cpu.describe()
    assert bf16_unavailable(cpu) is None


def test_a_cpu_without_bf16_says_so_and_why_bf16_is_not_offered() -> None:
    cpu = read_cpu(EPYC)
    assert cpu.isa == ("AVX2",)
    assert not cpu.bf16
    assert cpu.describe().startswith("AMD EPYC (AVX2; no AVX-512, AVX512-VNNI, AMX-BF16, AMX-INT8)")
    why = bf16_unavailable(cpu)
    assert why is not None and "AMD EPYC" in why and "neither AMX-BF16 nor AVX512-BF16" in why


def test_avx512_bf16_alone_is_enough() -> None:
    cpu = CpuInfo(model="Cooper Lake", isa=("AVX2", "AVX-512", "AVX512-BF16"), cores=2)
    assert cpu.bf16
    assert not cpu.same_as(read_cpu(EPYC))
    assert cpu.same_as(CpuInfo(model="Cooper Lake", isa=("AVX-512", "AVX2", "AVX512-BF16")))
