"""Inference engines for musicrep exports: windows [b, n_mels, frames] → embeddings [b, d].

    embed = load_embedder(uri, engine="openvino", precision="bf16")
    z = embed(windows)        # float32 numpy in, float32 numpy out

Both engines read the same export (`model.keras` + `model.json`):

- `tf`: the Keras model under `tf.function`, kernels standardised once at load
  (`WSConv2D.fold_standardisation`); bf16 rebuilds it under Keras' `mixed_bfloat16`
  policy (slice standardisation and the head stay float32).
- `openvino`: the export converted once per machine to OpenVINO IR (kernels standardised
  at conversion, see `WSConv2D.fold_standardisation`), cached in the temporary directory
  under the model_id and the OpenVINO version, compiled for the CPU with
  `INFERENCE_PRECISION_HINT` f32 or bf16 (the compiled model cached beside the IR,
  without its weights, so a worker's next start skips most of the compilation).

bf16 needs bfloat16 units: on a CPU, the `amx_bf16` or `avx512_bf16` flag (Intel Xeon 4th
generation and later; AMD Zen 4 and later have avx512_bf16); with the `tf` engine, a GPU
also qualifies. Elsewhere bf16 is refused with ConfigError rather than emulated: emulated
bf16 is slower than fp32 and changes the numbers for nothing.

The jobs name an engine or "auto" (the default); `resolve_engine` turns that into the
engine a worker runs, on the worker's own hardware (see its docstring for the rule).
"""
from __future__ import annotations

import glob
import logging
import os
import re
import tempfile
import threading
from typing import Callable

import numpy as np

from musicrep.contracts.sidecar import ExportMetadata, read_metadata
from musicrep.errors import ConfigError

logger = logging.getLogger(__name__)

ENGINES = ("tf", "openvino")
AUTO_ENGINE = "auto"
ENGINE_CHOICES = (AUTO_ENGINE, *ENGINES)  # what the jobs' --engine takes
PRECISIONS = ("fp32", "bf16")
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
AVX512_FLAG = "avx512f"  # where auto's fp32 pick changes (resolve_engine)
# Bumped when the conversion changes, so machines do not reuse IR made the old way.
CONVERSION_VERSION = 1

Embedder = Callable[[np.ndarray], np.ndarray]

_loaded: dict[tuple, Embedder] = {}
_lock = threading.Lock()


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in `cpuinfo_path` (empty where there is no such file)."""
    try:
        with open(cpuinfo_path) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """True where the CPU computes in bfloat16 natively (AMX or AVX-512 BF16)."""
    return bool(BF16_CPU_FLAGS & cpu_flags())


def check_names(*, engine: str, precision: str, allow_auto: bool = False) -> None:
    """Raises ConfigError for an unknown engine or precision ("auto" only with allow_auto)."""
    known = ENGINE_CHOICES if allow_auto else ENGINES
    if engine not in known:
        raise ConfigError(f"unknown engine {engine!r}; known: {', '.join(known)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")


def check_precision(precision: str, *, engine: str, gpu: bool = False, has_bf16: bool | None = None) -> None:
    """Raises ConfigError for bf16 without bf16 hardware (`has_bf16`: the CPU's bf16 units,
    default this machine's); the names are checked where the settings are built."""
    has_bf16 = cpu_has_bf16() if has_bf16 is None else has_bf16
    if precision == "bf16" and not has_bf16 and not (gpu and engine == "tf"):
        raise ConfigError(
            f"precision bf16 needs a CPU with {' or '.join(sorted(BF16_CPU_FLAGS))} "
            f"(Intel Xeon 4th gen+, AMD Zen 4+){' or a GPU with --engine tf' if engine == 'tf' else ''}; "
            f"this machine's CPU has neither, so use --precision fp32"
        )


def nvidia_devices() -> list[str]:
    """NVIDIA device nodes of this machine, found without starting TensorFlow."""
    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def gpu_present() -> bool:
    """True where TensorFlow sees a GPU. Imports TensorFlow only on a machine with NVIDIA
    device nodes: TensorFlow's GPUs are CUDA devices, and the import costs seconds."""
    if not nvidia_devices():
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def check_front_end(*, engine: str, log_mel_on: str) -> None:
    """Raises ConfigError where the engine cannot run the front end asked for."""
    if log_mel_on == "device" and engine == "openvino":
        raise ConfigError("--log-mel-on device runs the front end as TensorFlow ops: use --engine tf (or auto)")


def resolve_engine(
    engine: str,
    precision: str,
    *,
    log_mel_on: str = "cpu",
    gpu: bool | None = None,
    flags: frozenset[str] | None = None,
) -> str:
    """The engine a worker runs for the jobs' --engine (a name or "auto"), on its hardware.

    The rule for "auto" (measured on 2 cores, issue 20. AMD Zen 4, avx512_bf16: tf fp32
    15.1 windows/s, OpenVINO bf16 31.3; whole job tf fp32 5.99 audio-s per CPU-s, OpenVINO
    fp32 5.41, OpenVINO bf16 9.78. AMD Zen 3, AVX2 only: the embed job ran at 6.15
    windows/s with tf fp32, 9.61 with OpenVINO fp32):
    - the device front end (log_mel_on "device": TF ops in the graph) → tf;
    - fp32 on a GPU → tf; fp32 on a CPU with AVX-512 → tf (it beat OpenVINO fp32 in the
      job); fp32 on a CPU without AVX-512 → openvino (1.56× tf fp32 in the job);
    - bf16 on a GPU → tf; bf16 on a CPU with bf16 units → openvino (2.07× tf fp32, where
      tf bf16 is 1.06×); bf16 elsewhere is refused (check_precision's message).
    An explicit engine is kept, but tf + bf16 on a CPU without a GPU is refused with a hint
    (it costs bf16's rounding for no speed); `load_embedder` itself still allows it, for
    benchmarks and the bf16 parity tests. `gpu` and `flags` default to this machine's.

    Raises:
      ConfigError: unknown names, a refused pairing, or bf16 without bf16 hardware.
    """
    check_names(engine=engine, precision=precision, allow_auto=True)
    check_front_end(engine=engine, log_mel_on=log_mel_on)
    needs_gpu_check = engine == AUTO_ENGINE or (precision == "bf16" and engine == "tf")
    gpu = (gpu_present() if needs_gpu_check else False) if gpu is None else gpu
    has_bf16 = cpu_has_bf16() if flags is None else bool(BF16_CPU_FLAGS & flags)
    flags = cpu_flags() if flags is None else flags
    if engine == AUTO_ENGINE:
        fast_on_cpu = has_bf16 if precision == "bf16" else AVX512_FLAG not in flags
        engine = "openvino" if fast_on_cpu and not gpu and log_mel_on != "device" else "tf"
    if precision == "bf16" and engine == "tf" and not gpu:
        if not has_bf16:
            check_precision(precision, engine="openvino", has_bf16=False)  # raises its message
        hint = "use --engine auto (OpenVINO on this CPU) or --precision fp32"
        if log_mel_on == "device":
            hint = "use --precision fp32 (or run on a GPU)"
        raise ConfigError(f"--engine tf --precision bf16 without a GPU runs at ~1.06x fp32 (OpenVINO bf16: ~2x): {hint}")
    check_precision(precision, engine=engine, gpu=gpu, has_bf16=has_bf16)
    return engine


def load_embedder(
    uri: str,
    *,
    metadata: ExportMetadata | None = None,
    engine: str = "tf",
    precision: str = "fp32",
    cpu_threads: int | None = None,
    jit_compile: bool = False,
    check_hardware: bool = True,
) -> Embedder:
    """The export at `uri` as a function windows [b, n_mels, frames] float32 → [b, d] float32.

    Loaded once per process for each (uri, engine, precision, threads): RunInference
    may ask again for every DoFn instance of a worker. `metadata`: the export's sidecar
    as the launcher read it (read from `uri` when not given). `check_hardware`: refuse
    bf16 without bf16 units here (False where the launcher checked this machine already).
    """
    key = (uri, engine, precision, cpu_threads, jit_compile)
    with _lock:
        if key not in _loaded:
            metadata = metadata or read_metadata(uri)
            if engine == "tf":
                _loaded[key] = _tensorflow_embedder(uri, metadata, precision, cpu_threads, jit_compile, check_hardware)
            else:
                if check_hardware:
                    check_precision(precision, engine=engine)
                _loaded[key] = _openvino_embedder(uri, metadata, precision, cpu_threads)
        return _loaded[key]


def _tensorflow_embedder(
    uri: str, metadata: ExportMetadata, precision: str, cpu_threads: int | None, jit_compile: bool, check_hardware: bool
) -> Embedder:
    import tensorflow as tf

    model = tensorflow_model(
        uri, metadata=metadata, precision=precision, cpu_threads=cpu_threads, check_hardware=check_hardware
    )
    forward = tf.function(lambda windows: model(windows, training=False), jit_compile=jit_compile, reduce_retracing=True)
    return lambda windows: np.asarray(forward(windows), dtype=np.float32)


def tensorflow_model(
    uri: str,
    *,
    metadata: ExportMetadata | None = None,
    precision: str = "fp32",
    cpu_threads: int | None = None,
    check_hardware: bool = True,
):
    """The export at `uri` as the Keras model the `tf` engine runs: bf16 rebuilt under
    `mixed_bfloat16`, kernels standardised once (checks bf16 hardware unless told the
    launcher did, sets TF's threads). `metadata`: its sidecar, if read already."""
    import keras
    import tensorflow as tf

    from musicrep.model.export import load
    from musicrep.model.sf_nfnet import SFNFNetConfig, build_sf_nfnet

    metadata = metadata or read_metadata(uri)
    gpus = tf.config.list_physical_devices("GPU")
    if check_hardware:
        check_precision(precision, engine="tf", gpu=bool(gpus))
    # Grow GPU memory on demand: several handlers (or a decoder) may share a GPU.
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if not gpus and cpu_threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
            tf.config.threading.set_inter_op_parallelism_threads(cpu_threads)
        except RuntimeError:  # the runtime already started in this process: keep its pools
            logger.warning("TensorFlow already initialised; cannot limit it to %d threads", cpu_threads)
    model = load(uri, metadata=metadata)
    if precision == "bf16":
        # The dtype policy is global in Keras: set it only while the bf16 copy is built.
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            bf16_model = build_sf_nfnet(SFNFNetConfig.from_dict(metadata.config))
        finally:
            keras.config.set_dtype_policy(previous)
        bf16_model.set_weights(model.get_weights())
        model = bf16_model
    _fold_standardisation(model, plain_convolution=False)
    return model


def _fold_standardisation(model, *, plain_convolution: bool) -> None:
    from musicrep.model.layers import WSConv2D

    for layer in model.layers:
        if isinstance(layer, WSConv2D):
            layer.fold_standardisation(plain_convolution=plain_convolution)


def openvino_ir_path(model_id: str) -> str:
    """Where this machine keeps the OpenVINO IR of model `model_id` (`.xml`, with its `.bin`)."""
    import openvino

    version = re.sub(r"[^0-9A-Za-z.]+", "_", openvino.__version__)  # "2026.4.1-22982-…/2026/4"
    directory = os.path.join(tempfile.gettempdir(), "musicrep-openvino")
    return os.path.join(directory, f"{model_id}-v{CONVERSION_VERSION}-ov{version}.xml")


def convert_to_openvino(uri: str, metadata: ExportMetadata | None = None):
    """The export at `uri` as an `openvino.Model` (float32 weights, standardised kernels folded)."""
    import openvino
    import tensorflow as tf

    from musicrep.model.export import load

    metadata = metadata or read_metadata(uri)
    model = load(uri, metadata=metadata)
    _fold_standardisation(model, plain_convolution=True)
    signature = tf.TensorSpec([None, metadata.n_mels, None], tf.float32, name="log_mel")
    forward = tf.function(lambda windows: model(windows, training=False), input_signature=[signature])
    return openvino.convert_model(forward)


def _openvino_embedder(uri: str, metadata: ExportMetadata, precision: str, cpu_threads: int | None) -> Embedder:
    import openvino

    path = openvino_ir_path(metadata.model_id)
    core = openvino.Core()
    if not os.path.exists(path):
        _save_ir(convert_to_openvino(uri, metadata), path)
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
        # Unpinned threads: a worker shares its cores with decoding and Beam's own threads,
        # and pinned threads stall whenever another thread takes their core (measured on a
        # busy 2-core machine: 3.4 windows/s pinned, 5.6 unpinned).
        "ENABLE_CPU_PINNING": False,
        # OpenVINO's cache of compiled models, without weights (it reads them from the
        # IR's .bin): compiling F0 from it took 0.27 s against 1.21 s (AMD Zen 3), for a
        # ~1 MB blob per precision. It is used only when compiling from the IR's path.
        "CACHE_DIR": os.path.join(os.path.dirname(path), "compiled"),
        "CACHE_MODE": "OPTIMIZE_SIZE",
    }
    if cpu_threads:
        config["INFERENCE_NUM_THREADS"] = cpu_threads
    compiled = core.compile_model(path, "CPU", config)
    request = compiled.create_infer_request()
    logger.info("OpenVINO %s model from %s on %s", precision, uri, core.get_property("CPU", "FULL_DEVICE_NAME"))

    busy = threading.Lock()  # one request: DoFn threads of a worker share this embedder

    def embed(windows: np.ndarray) -> np.ndarray:
        # share_inputs: no copy of the batch; outputs are copied (the request reuses its buffer).
        with busy:
            return np.array(request.infer({0: windows}, share_inputs=True)[0], dtype=np.float32)

    return embed


def _save_ir(ov_model, path: str) -> None:
    """Writes the IR so that a concurrent reader sees it whole or not at all."""
    import openvino

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path), prefix="partial-") as tmp:
        staged = os.path.join(tmp, "model.xml")
        openvino.save_model(ov_model, staged, compress_to_fp16=False)
        # Readers look for the .xml, so it goes last.
        os.replace(staged[:-4] + ".bin", path[:-4] + ".bin")
        os.replace(staged, path)
