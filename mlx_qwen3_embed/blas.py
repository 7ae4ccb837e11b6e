"""Which BLAS MLX's CPU matmuls run on, and how the CLI gets a fast one on Linux.

The Linux mlx-cpu wheel bundles the reference netlib BLAS: fp32 matmul at ~4 GFLOP/s on a 2-core x86 machine,
against ~240 with OpenBLAS (../shared/REFERENCE.md). The wheel's libmlx resolves `cblas_sgemm` through the
process's global symbol scope first, so a BLAS preloaded with LD_PRELOAD replaces the bundled one; LD_PRELOAD is
read only when a process starts, so the CLI re-executes itself once with it (`reexec_env`). On macOS MLX uses
Accelerate and on Metal the GPU: nothing to do there.

    sudo apt-get install -y libopenblas0-pthread      # Debian/Ubuntu: the one-line fix
"""

import ctypes
import ctypes.util
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

BLAS_ENV = "MLX_EMBED_BLAS"                 # explicit path of a BLAS to preload
NO_REEXEC_ENV = "MLX_EMBED_NO_BLAS_REEXEC"  # set to 1: never re-exec (keep the process as started)
REEXEC_GUARD_ENV = "MLX_EMBED_BLAS_REEXEC"  # set by the re-exec itself, so it happens at most once
INSTALL_HINT = "sudo apt-get install -y libopenblas0-pthread (Debian/Ubuntu) or dnf install openblas (Fedora)"
REFERENCE = "reference BLAS bundled with mlx-cpu (slow: ~4 GFLOP/s)"
FAST_NAMES = ("openblas", "mkl", "blis", "accelerate", "armpl")

# Searched in order; the pthread variant first: the OpenMP one fights other runtimes (torch) for threads
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

_warned = False


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def global_sgemm() -> Optional[str]:
    """The file that provides `cblas_sgemm` in the process's global scope (what MLX binds to first), or None."""
    try:
        process = ctypes.CDLL(None)
        symbol = process.cblas_sgemm
        info = _DlInfo()
        if not process.dladdr(ctypes.cast(symbol, ctypes.c_void_p), ctypes.byref(info)) or not info.dli_fname:
            return None
        return os.fsdecode(info.dli_fname)
    except (AttributeError, OSError):  # no such symbol, or no dladdr (not glibc)
        return None


def blas() -> str:
    """A one-line name of the BLAS behind MLX's CPU matmul, e.g. "OpenBLAS (/usr/lib/.../libopenblas.so.0)"."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    path = global_sgemm()
    if path is None:
        return REFERENCE
    name = Path(path).name.lower()
    label = next((n for n in FAST_NAMES if n in name), None)
    labels = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "accelerate": "Accelerate", "armpl": "ArmPL"}
    return f"{labels[label]} ({path})" if label else f"{Path(path).name} ({path})"


def is_slow() -> bool:
    """True when MLX's CPU matmuls run on the bundled reference BLAS (Linux without a preloaded fast one)."""
    return sys.platform.startswith("linux") and blas() == REFERENCE


def find_fast_blas(environ: Optional[dict] = None) -> Optional[str]:
    """Path of an installed optimized BLAS to preload: $MLX_EMBED_BLAS, else the first OpenBLAS found."""
    explicit = (os.environ if environ is None else environ).get(BLAS_ENV)
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"{BLAS_ENV}={explicit} is not a file: point it at a BLAS shared library "
                                    f"(e.g. libopenblas.so.0) or unset it")
        return explicit
    for path in CANDIDATES:
        if Path(path).is_file():
            return path
    soname = ctypes.util.find_library("openblas")  # a bare soname: the dynamic loader searches for it
    if soname is None:
        return None
    try:  # the loader's cache can name a library that was since removed: preloading it would fail noisily
        ctypes.CDLL(soname)
    except OSError:
        return None
    return soname


def reexec_env(environ: Optional[dict] = None) -> Optional[dict]:
    """The environment to re-execute this process with so an optimized BLAS is preloaded, or None if not needed.

    None when: not Linux, the opt-out or the loop guard is set, a fast BLAS is already in use, or none is installed.
    """
    environ = dict(os.environ if environ is None else environ)
    if not sys.platform.startswith("linux") or environ.get(NO_REEXEC_ENV) or environ.get(REEXEC_GUARD_ENV):
        return None
    if not is_slow():
        return None
    path = find_fast_blas(environ)
    if path is None:
        return None
    preload = environ.get("LD_PRELOAD", "")
    environ["LD_PRELOAD"] = f"{path}:{preload}" if preload else path
    environ[REEXEC_GUARD_ENV] = "1"
    return environ


def warn_if_slow() -> None:
    """Warn once per process when CPU matmuls would run on the reference BLAS, naming the fix."""
    global _warned
    if _warned or not is_slow():
        return
    _warned = True
    found = find_fast_blas()
    fix = (f"preload it: LD_PRELOAD={found} (the mlx-embed CLI does this by itself)" if found
           else f"install OpenBLAS: {INSTALL_HINT}; the mlx-embed CLI then preloads it by itself")
    warnings.warn(f"MLX's CPU matmuls run on the {REFERENCE}, ~50x slower than an optimized BLAS: {fix}",
                  RuntimeWarning, stacklevel=4)
