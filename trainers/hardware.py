"""What this machine computes fast, and the environment that makes TensorFlow use it.

CPU facts come from /proc/cpuinfo (or sysctl on macOS, or `platform` elsewhere) without importing
TensorFlow; GPU and TPU facts only when TensorFlow is already imported or the caller asks for them.

`configure_environment()` runs when the `trainers` package is imported, so every `python -m trainers.X`
gets it before TensorFlow starts: on x86-64 CPUs with AVX2 it sets TF_ENABLE_ONEDNN_OPTS=1 (oneDNN's
convolutions trained ResNet-20 3x faster than TensorFlow's own kernels on an AMD EPYC without AVX-512;
TensorFlow already turns oneDNN on by itself on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX).
It never overrides a value you set (TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off), and it cannot act once
TensorFlow is imported: a library user who imports tensorflow before trainers keeps TensorFlow's default.
"""

import dataclasses
import functools
import importlib.metadata
import logging
import os
import platform
import re
import subprocess
import sys

log = logging.getLogger("trainers")

ONEDNN_VAR = "TF_ENABLE_ONEDNN_OPTS"
# Set next to ONEDNN_VAR when trainers set it, so child processes (which inherit both) still know whose
# setting it is and the benchmark can give a baseline TensorFlow's own default.
MARKER_VAR = "TRAINERS_SET_ONEDNN_OPTS"
# Flags with which TensorFlow (Linux x86) enables oneDNN by default (tensorflow/core/util/port.cc).
TF_ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
# Native bfloat16 arithmetic on a CPU: AVX512-BF16 (Cooper Lake, Zen 4+) or AMX (Sapphire Rapids+).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16")
X86_64 = ("x86_64", "amd64", "x64")
GPU_BF16_CAPABILITY = (8, 0)  # Ampere and newer
GPU_FP16_CAPABILITY = (7, 0)  # Volta/Turing tensor cores
TRUE_WORDS, FALSE_WORDS = ("1", "true"), ("0", "false")


@dataclasses.dataclass(frozen=True)
class CPU:
    """model: marketing name; logical: hardware threads; available: those this process may use;
    physical: cores (None when unknown); flags: lower-case feature flags; arch: platform.machine();
    system: sys.platform."""

    model: str
    logical: int
    available: int
    physical: int | None
    flags: frozenset
    arch: str
    system: str = sys.platform

    @property
    def x86_64(self):
        return self.arch.lower() in X86_64

    @property
    def native_bf16(self):
        return any(flag in self.flags for flag in BF16_FLAGS)

    @property
    def onednn_faster(self):
        """oneDNN's kernels beat TensorFlow's Eigen ones here (x86-64 with AVX2 or better)."""
        return self.x86_64 and "avx2" in self.flags

    @property
    def tf_enables_onednn(self):
        """TensorFlow turns oneDNN on by itself on this CPU (when TF_ENABLE_ONEDNN_OPTS is unset)."""
        linux = self.system.startswith("linux")
        return linux and self.x86_64 and any(flag in self.flags for flag in TF_ONEDNN_DEFAULT_FLAGS)


def parse_cpuinfo(text, arch=None, logical=None, available=None):
    """A CPU from the text of /proc/cpuinfo (x86 "model name"/"flags", ARM "Features"/"CPU part")."""
    model, flags, cores = None, set(), set()
    physical_id = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key in ("model name", "hardware", "cpu model", "processor") and not model and not value.isdigit():
            model = value
        elif key in ("flags", "features") and not flags:
            flags = set(value.lower().split())
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            cores.add((physical_id, value))
    logical = logical or os.cpu_count() or 1
    return CPU(
        model=model or platform.processor() or "unknown",
        logical=logical,
        available=available or logical,
        physical=len(cores) or None,
        flags=frozenset(flags),
        arch=arch or platform.machine() or "unknown",
    )


def _available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _sysctl(name):
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def cpu():
    """This machine's CPU; never imports TensorFlow, never fails (unknown facts stay empty)."""
    available = _available_cpus()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read(), available=available)
    except OSError:
        pass
    model, flags, physical = None, set(), None
    if sys.platform == "darwin":
        model = _sysctl("machdep.cpu.brand_string")
        for name in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
            flags |= set((_sysctl(name) or "").lower().replace(".", "_").split())
        cores = _sysctl("hw.physicalcpu")
        physical = int(cores) if cores and cores.isdigit() else None
    logical = os.cpu_count() or 1
    return CPU(
        model=model or platform.processor() or "unknown",
        logical=logical,
        available=available,
        physical=physical,
        flags=frozenset(flags),
        arch=platform.machine() or "unknown",
    )


# -- oneDNN ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OneDNN:
    """What became of TF_ENABLE_ONEDNN_OPTS: state "on" | "off" | "tensorflow" (TF's default decides),
    by "trainers" | "user" | "tensorflow", the reason, and the line the training loop logs."""

    state: str
    by: str
    reason: str = ""

    @property
    def line(self):
        if self.by == "trainers":
            return f"oneDNN CPU kernels: on (set by trainers; {ONEDNN_VAR}=0 to turn off)"
        if self.by == "user":
            return f"oneDNN CPU kernels: {self.state} (your setting)"
        return "oneDNN CPU kernels: left to TensorFlow" + (f" ({self.reason})" if self.reason else "")


_decision = None


def decide_onednn(environ, modules, cpu_facts):
    """(decision, value to set or None): what configure_environment does, without doing it."""
    value = environ.get(ONEDNN_VAR)
    if value is not None and environ.get(MARKER_VAR) == value:  # a trainers parent set it: still ours
        return OneDNN("on" if value.strip().lower() in TRUE_WORDS else "off", "trainers"), None
    if value is not None:
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return OneDNN("on", "user"), None
        if word in FALSE_WORDS:
            return OneDNN("off", "user"), None
        return OneDNN("tensorflow", "tensorflow", f"{ONEDNN_VAR}={value!r} is neither 0 nor 1"), None
    default = "on by default on this CPU" if cpu_facts.tf_enables_onednn else "off by default on this CPU"
    if "tensorflow" in modules:
        return OneDNN("tensorflow", "tensorflow", f"tensorflow was imported before trainers; {default}"), None
    if cpu_facts.tf_enables_onednn:
        return OneDNN("tensorflow", "tensorflow", default), None
    if not cpu_facts.onednn_faster:
        why = "no AVX2" if cpu_facts.x86_64 else f"{cpu_facts.arch} CPU"
        return OneDNN("tensorflow", "tensorflow", f"{why}; {default}"), None
    return OneDNN("on", "trainers"), "1"


def configure_environment(environ=None, modules=None, cpu_facts=None):
    """Turns oneDNN's CPU kernels on where they are faster and TensorFlow would leave them off.

    Only when TF_ENABLE_ONEDNN_OPTS is unset and tensorflow is not imported yet (it reads the variable
    once). Returns the OneDNN decision and records it for `onednn()`.
    """
    global _decision
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    decision, value = decide_onednn(environ, modules, cpu_facts or cpu())
    if value is not None:
        environ[ONEDNN_VAR] = value
        environ[MARKER_VAR] = value
    if environ is os.environ:
        _decision = decision
    return decision


def onednn():
    """The decision configure_environment made in this process (worked out now if it never ran)."""
    if _decision is not None:
        return _decision
    return decide_onednn(os.environ, sys.modules, cpu())[0]


def user_environment(environ=None):
    """A copy of the environment without what trainers set: a child process gets TensorFlow's default
    (or the user's own TF_ENABLE_ONEDNN_OPTS), as a program that never imports trainers would."""
    env = dict(os.environ if environ is None else environ)
    if MARKER_VAR in env:
        if env.get(ONEDNN_VAR) == env[MARKER_VAR]:
            env.pop(ONEDNN_VAR, None)
        env.pop(MARKER_VAR)
    return env


# -- accelerators and precision ------------------------------------------------------------------------------
def accelerators(load=False):
    """{"gpus": [{"name", "compute_capability"}], "tpus": n} from TensorFlow, or None when TensorFlow is
    not imported and load is False (asking would start it)."""
    if "tensorflow" not in sys.modules and not load:
        return None
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(device)
        except (RuntimeError, ValueError):
            details = {}
        gpus.append(
            {
                "name": details.get("device_name", device.name),
                "compute_capability": tuple(details.get("compute_capability") or ()) or None,
            }
        )
    tpus = len(tf.config.list_physical_devices("TPU")) or len(tf.config.list_logical_devices("TPU"))
    return {"gpus": gpus, "tpus": tpus}


def _device(found):
    if found and found["tpus"]:
        return "TPU"
    if found and found["gpus"]:
        return "GPU"
    return "CPU"


def auto_precision(device=None, found=None, cpu_facts=None, onednn_state=None):
    """The fastest precision the hardware computes natively: "bf16" on TPUs, GPUs of compute capability
    8.0+ and CPUs with AVX512-BF16 or AMX (unless oneDNN is off: TensorFlow's own kernels emulate bf16,
    0.17x of fp32 measured on a Zen 4 EPYC); "fp16" on GPUs of capability 7.x; else "fp32".

    device: "CPU" | "GPU" | "TPU" (default: the loop's, a TPU if any, else a GPU if any, else the CPU).
    onednn_state: "on" | "off" | "tensorflow" (default: this process's, `onednn().state`).
    """
    device = device.upper() if device else None
    if device is None or (device != "CPU" and found is None):
        found = accelerators(load=True) if found is None else found
        device = device or _device(found)
    if device == "TPU":
        return "bf16"
    if device == "GPU":
        capabilities = [g["compute_capability"] for g in found["gpus"] if g["compute_capability"]]
        if not capabilities:
            return "fp32"
        lowest = min(capabilities)
        if lowest >= GPU_BF16_CAPABILITY:
            return "bf16"
        return "fp16" if lowest >= GPU_FP16_CAPABILITY else "fp32"
    return "bf16" if _cpu_computes_bf16(cpu_facts or cpu(), onednn_state) else "fp32"


def _cpu_computes_bf16(facts, onednn_state=None):
    return facts.native_bf16 and (onednn_state or onednn().state) != "off"


def warn_if_slow(precision, device=None, found=None, cpu_facts=None, onednn_state=None):
    """Logs (and returns) a warning when `precision` is emulated on the device the loop will use: bf16 on a
    CPU without AVX512-BF16/AMX ran 4-14x slower than fp32 on an AMD EPYC without AVX-512. None if fine."""
    if precision not in ("bf16", "fp16"):
        return None
    if device is None:
        found = accelerators(load=True) if found is None else found
        device = _device(found)
    device = device.upper()
    message = None
    if device == "CPU":
        facts = cpu_facts or cpu()
        if precision == "bf16" and not facts.native_bf16:
            message = (
                f"--precision bf16 on a CPU without native bfloat16 ({facts.model}: no avx512_bf16 or amx_bf16): "
                "TensorFlow emulates it, measured 4-14x slower than fp32. Use --precision fp32 (or auto)."
            )
        elif precision == "bf16" and not _cpu_computes_bf16(facts, onednn_state):
            message = (
                f"--precision bf16 with oneDNN off ({ONEDNN_VAR}=0): TensorFlow's own CPU kernels emulate "
                "bfloat16, measured 6x slower than fp32. Use --precision fp32 (or auto), or unset the variable."
            )
        elif precision == "fp16" and "avx512_fp16" not in facts.flags and "amx_fp16" not in facts.flags:
            message = (
                f"--precision fp16 on a CPU without native float16 ({facts.model}): TensorFlow emulates it, "
                "slower than fp32. Use --precision fp32 (or auto)."
            )
    elif device == "GPU" and precision == "bf16":
        capabilities = [g["compute_capability"] for g in (found or {}).get("gpus", []) if g["compute_capability"]]
        if capabilities and min(capabilities) < GPU_BF16_CAPABILITY:
            message = (
                f"--precision bf16 on a GPU of compute capability {'.'.join(map(str, min(capabilities)))}: "
                "bfloat16 needs 8.0+ (Ampere) to be fast. Use --precision fp16 (or auto)."
            )
    if message:
        log.warning("%s", message)
    return message


# -- description -------------------------------------------------------------------------------------------
def _version(*distributions, module=None):
    if module and module in sys.modules:
        version = getattr(sys.modules[module], "__version__", None)
        if version:
            return version
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def describe(gpus=False):
    """The machine for logs and the benchmark: CPU model, cores, flags of interest, oneDNN, versions;
    the GPUs/TPUs too when TensorFlow is imported or gpus=True."""
    facts = cpu()
    decision = onednn()
    info = {
        "cpu": facts.model,
        "arch": facts.arch,
        "logical_cpus": facts.logical,
        "available_cpus": facts.available,
        "physical_cores": facts.physical,
        "flags": {flag: flag in facts.flags for flag in FLAGS_OF_INTEREST},
        "native_bf16": facts.native_bf16,
        "onednn": {"state": decision.state, "by": decision.by, "line": decision.line},
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow", "tensorflow-cpu", "tensorflow_cpu", "tf-nightly", module="tensorflow"),
        "keras": _version("keras", "keras-nightly", module="keras"),
        "os": platform.platform(terse=True),
    }
    found = accelerators(load=gpus)
    if found is not None:
        info["gpus"] = [
            {**g, "compute_capability": ".".join(map(str, g["compute_capability"] or ())) or None}
            for g in found["gpus"]
        ]
        info["tpus"] = found["tpus"]
    return info


_MODEL_NOISE = re.compile(r"\s+")


def summary_line(info=None):
    """One line: 'AMD EPYC (x86_64), 2 CPUs, avx2 fma; TF 2.21.0, Keras 3.15.1; oneDNN CPU kernels: ...'."""
    info = info or describe()
    flags = " ".join(flag for flag, present in info["flags"].items() if present) or "no flags of interest"
    return _MODEL_NOISE.sub(
        " ",
        f"{info['cpu']} ({info['arch']}), {info['available_cpus']} CPUs, {flags}; "
        f"TF {info['tensorflow']}, Keras {info['keras']}; {info['onednn']['line']}",
    )
