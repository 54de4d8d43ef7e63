"""trainers.hardware: CPU facts from fake /proc/cpuinfo text, the oneDNN decision, precision by hardware.

Pure Python on fake inputs; the two subprocesses check what importing trainers does before and after
tensorflow, without starting TensorFlow themselves.
"""

import logging
import os
import subprocess
import sys

import pytest

from trainers import hardware

AMD_EPYC = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""

SAPPHIRE_RAPIDS = """\
processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""

COOPER_LAKE_NO_AMX = """\
model name\t: Intel(R) Xeon(R) Platinum 8380H
flags\t\t: avx avx2 fma avx512f avx512_vnni avx512_bf16
"""

CASCADE_LAKE = """\
model name\t: Intel(R) Xeon(R) CPU @ 2.80GHz
flags\t\t: avx avx2 fma avx512f avx512_vnni
"""

OLD_XEON = """\
model name\t: Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz
flags\t\t: sse4_1 sse4_2 avx
"""

GRAVITON = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid bf16 i8mm
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def make(text, arch="x86_64", system="linux"):
    cpu = hardware.parse_cpuinfo(text, arch=arch, logical=2, available=2)
    return hardware.CPU(cpu.model, cpu.logical, cpu.available, cpu.physical, cpu.flags, cpu.arch, system)


def test_parse_cpuinfo_reads_model_flags_and_cores():
    cpu = make(AMD_EPYC)
    assert cpu.model == "AMD EPYC 7B13"
    assert {"avx2", "fma"} <= cpu.flags and "avx512f" not in cpu.flags
    assert cpu.physical == 2 and cpu.logical == 2 and cpu.available == 2
    assert cpu.onednn_faster and not cpu.tf_enables_onednn and not cpu.native_bf16


def test_parse_cpuinfo_arm_features_and_no_model_name():
    cpu = make(GRAVITON, arch="aarch64")
    assert "asimd" in cpu.flags and cpu.model  # falls back to platform.processor() or "unknown"
    assert not cpu.x86_64 and not cpu.onednn_faster and not cpu.tf_enables_onednn


def test_cpu_without_proc_cpuinfo_falls_back(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr(hardware, "open", missing, raising=False)
    monkeypatch.setattr(hardware.sys, "platform", "win32")
    cpu = hardware.cpu.__wrapped__()
    assert cpu.model and cpu.logical >= 1 and cpu.available >= 1 and cpu.flags == frozenset()


@pytest.mark.parametrize(
    "text, tf_default, bf16",
    [(AMD_EPYC, False, False), (SAPPHIRE_RAPIDS, True, True), (COOPER_LAKE_NO_AMX, True, True),
     (CASCADE_LAKE, True, False), (OLD_XEON, False, False)],
)  # fmt: skip
def test_cpu_capabilities(text, tf_default, bf16):
    cpu = make(text)
    assert cpu.tf_enables_onednn == tf_default
    assert cpu.native_bf16 == bf16
    assert not make(text, system="win32").tf_enables_onednn  # TensorFlow's default is Linux only


# -- oneDNN --------------------------------------------------------------------------------------------------------
def configure(text=AMD_EPYC, env=None, modules=(), arch="x86_64"):
    env = {} if env is None else env
    decision = hardware.configure_environment(env, dict.fromkeys(modules), make(text, arch))
    return decision, env


def test_avx2_cpu_gets_onednn_from_trainers():
    decision, env = configure()
    assert env == {hardware.ONEDNN_VAR: "1", hardware.MARKER_VAR: "1"}
    assert (decision.state, decision.by) == ("on", "trainers")
    assert decision.line == "oneDNN CPU kernels: on (set by trainers; TF_ENABLE_ONEDNN_OPTS=0 to turn off)"


@pytest.mark.parametrize("value, state", [("0", "off"), ("false", "off"), ("1", "on"), ("True", "on")])
def test_the_users_setting_is_kept(value, state):
    decision, env = configure(env={hardware.ONEDNN_VAR: value})
    assert env == {hardware.ONEDNN_VAR: value}
    assert decision.line == f"oneDNN CPU kernels: {state} (your setting)"


def test_a_child_process_knows_trainers_set_it():
    decision, env = configure(env={hardware.ONEDNN_VAR: "1", hardware.MARKER_VAR: "1"})
    assert decision.by == "trainers"
    decision, _ = configure(env={hardware.ONEDNN_VAR: "0", hardware.MARKER_VAR: "1"})  # changed since: the user's
    assert decision.line == "oneDNN CPU kernels: off (your setting)"


@pytest.mark.parametrize(
    "text, modules, arch, reason",
    [
        (AMD_EPYC, ("tensorflow",), "x86_64", "tensorflow was imported before trainers"),
        (CASCADE_LAKE, (), "x86_64", "on by default on this CPU"),
        (OLD_XEON, (), "x86_64", "no AVX2"),
        (GRAVITON, (), "aarch64", "aarch64 CPU"),
    ],
)
def test_left_to_tensorflow(text, modules, arch, reason):
    decision, env = configure(text, modules=modules, arch=arch)
    assert env == {}
    assert decision.state == "tensorflow" and decision.line.startswith("oneDNN CPU kernels: left to TensorFlow")
    assert reason in decision.line


def test_a_value_tensorflow_does_not_read_as_a_bool_is_left_alone():
    decision, env = configure(env={hardware.ONEDNN_VAR: "yes"})
    assert env == {hardware.ONEDNN_VAR: "yes"} and decision.by == "tensorflow" and "'yes'" in decision.line


def test_user_environment_drops_only_what_trainers_set():
    ours = {hardware.ONEDNN_VAR: "1", hardware.MARKER_VAR: "1", "HOME": "/root"}
    assert hardware.user_environment(ours) == {"HOME": "/root"}
    theirs = {hardware.ONEDNN_VAR: "0", hardware.MARKER_VAR: "1"}
    assert hardware.user_environment(theirs) == {hardware.ONEDNN_VAR: "0"}
    assert hardware.user_environment({hardware.ONEDNN_VAR: "1"}) == {hardware.ONEDNN_VAR: "1"}


CHILD_ENV = {k: v for k, v in os.environ.items() if k not in (hardware.ONEDNN_VAR, hardware.MARKER_VAR)}


def _child(code):
    out = subprocess.run([sys.executable, "-c", code], env=CHILD_ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_importing_trainers_sets_it_without_importing_tensorflow():
    code = (
        "import os, sys, trainers.hardware as h; info = h.describe(); "
        "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), 'tensorflow' in sys.modules, info['onednn']['by'], "
        "sorted(info) == sorted(set(info)))"
    )
    expected_by = "trainers" if hardware.cpu().onednn_faster and not hardware.cpu().tf_enables_onednn else "tensorflow"
    value, imported, by, _ = _child(code).split()
    assert imported == "False" and by == expected_by
    assert value == ("1" if expected_by == "trainers" else "None")


@pytest.mark.skipif(
    not (hardware.cpu().onednn_faster and not hardware.cpu().tf_enables_onednn), reason="trainers sets nothing here"
)
def test_tensorflow_imported_first_keeps_its_default():
    # Only the module lookup matters: a stand-in 'tensorflow' avoids starting the real one.
    code = (
        "import os, sys, types; sys.modules['tensorflow'] = types.ModuleType('tensorflow'); "
        "import trainers.hardware as h; "
        "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), h.onednn().state)"
    )
    assert _child(code) == "None tensorflow"


# -- precision -----------------------------------------------------------------------------------------------------
def gpus(*capabilities):
    return {"gpus": [{"name": "GPU", "compute_capability": c} for c in capabilities], "tpus": 0}


@pytest.mark.parametrize(
    "device, found, text, expected",
    [
        ("CPU", None, AMD_EPYC, "fp32"),
        ("CPU", None, SAPPHIRE_RAPIDS, "bf16"),
        ("CPU", None, COOPER_LAKE_NO_AMX, "bf16"),
        ("CPU", None, CASCADE_LAKE, "fp32"),
        (None, gpus((8, 0)), AMD_EPYC, "bf16"),
        (None, gpus((9, 0), (8, 6)), AMD_EPYC, "bf16"),
        (None, gpus((7, 5)), AMD_EPYC, "fp16"),
        (None, gpus((8, 0), (7, 0)), AMD_EPYC, "fp16"),  # the slowest GPU decides
        (None, gpus((6, 1)), AMD_EPYC, "fp32"),
        (None, {"gpus": [], "tpus": 8}, AMD_EPYC, "bf16"),
        (None, gpus(), AMD_EPYC, "fp32"),
        (None, gpus(), SAPPHIRE_RAPIDS, "bf16"),
        ("GPU", gpus(None), AMD_EPYC, "fp32"),  # capability unknown: stay safe
    ],
)
def test_auto_precision(device, found, text, expected):
    assert hardware.auto_precision(device, found=found, cpu_facts=make(text), onednn_state="tensorflow") == expected


def test_auto_precision_is_fp32_on_a_bf16_cpu_with_onednn_off():
    """TensorFlow's own kernels emulate bf16: resnet20 trained at 0.17x of fp32 on a Zen 4 EPYC with oneDNN off."""
    assert hardware.auto_precision("CPU", cpu_facts=make(SAPPHIRE_RAPIDS), onednn_state="off") == "fp32"
    assert hardware.auto_precision("CPU", cpu_facts=make(SAPPHIRE_RAPIDS), onednn_state="on") == "bf16"
    assert hardware.auto_precision(None, found=gpus((8, 0)), cpu_facts=make(AMD_EPYC), onednn_state="off") == "bf16"
    assert "oneDNN off" in hardware.warn_if_slow("bf16", "CPU", cpu_facts=make(SAPPHIRE_RAPIDS), onednn_state="off")


def test_warn_if_slow(caplog):
    with caplog.at_level(logging.WARNING, logger="trainers"):
        message = hardware.warn_if_slow("bf16", "CPU", cpu_facts=make(AMD_EPYC))
    assert "4-14x slower than fp32" in message and message in caplog.text
    assert hardware.warn_if_slow("bf16", "CPU", cpu_facts=make(SAPPHIRE_RAPIDS), onednn_state="on") is None
    assert hardware.warn_if_slow("fp32", "CPU", cpu_facts=make(AMD_EPYC)) is None
    assert "emulates" in hardware.warn_if_slow("fp16", "CPU", cpu_facts=make(AMD_EPYC))
    assert "8.0" in hardware.warn_if_slow("bf16", "GPU", found=gpus((7, 0)))
    assert hardware.warn_if_slow("bf16", "GPU", found=gpus((8, 0))) is None
    assert hardware.warn_if_slow("bf16", None, found={"gpus": [], "tpus": 4}) is None


def test_describe_has_what_logs_and_the_benchmark_show():
    info = hardware.describe()
    for key in ("cpu", "arch", "logical_cpus", "available_cpus", "flags", "native_bf16", "onednn", "tensorflow",
                "keras", "python"):  # fmt: skip
        assert key in info
    assert set(info["flags"]) == set(hardware.FLAGS_OF_INTEREST)
    assert info["onednn"]["line"].startswith("oneDNN CPU kernels: ")
    assert info["tensorflow"] and info["keras"]
    line = hardware.summary_line(info)
    assert info["cpu"] in line and info["onednn"]["line"] in line
