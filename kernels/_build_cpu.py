"""cffi build script for the C backend (out-of-line API mode) -> extension module ``kernels._cpu_flip``.

Used by setup.py (``cffi_modules=["kernels/_build_cpu.py:ffibuilder"]``), so the extension is compiled when the
package is installed (``pip install .``, ``pip install -e .``, a wheel build) or with
``python setup.py build_ext --inplace``. It is never compiled at import time.

OpenMP is used where the compiler supports it (probed); BITBENCH_NO_OPENMP=1 builds without it. The extension is
optional: if it cannot be compiled the install still succeeds and ``kernels.backends()`` reports the C backend as
unavailable (the torch reference runs instead). CFLAGS etc. are honoured as usual.
"""
import os
import sys

from cffi import FFI

_here = os.path.dirname(os.path.abspath(__file__))
_root = os.path.dirname(_here)


def _rel(name):
    """Source paths relative to the project root (the directory setup.py runs from), as setuptools wants."""
    path = os.path.join(_here, name)
    try:
        rel = os.path.relpath(path, os.getcwd())
    except ValueError:  # different drive (Windows)
        return path
    return path if rel.startswith("..") else rel


CDEF = """
int bb_flip(int width, const void *x, void *out, const void *prot, uint32_t attack, int64_t n, uint64_t offset,
            uint64_t seed, uint64_t t01, uint64_t t10, int mask_only, int nthreads);
void bb_philox4x32_10(const uint32_t *ctr, const uint32_t *key, uint32_t *out);
const char *bb_build_info(void);
int bb_max_threads(void);
int bb_set_simd(int level);
int bb_encode_f32(const float *w, const int64_t *starts, int nseg, int family, const float *lo, const float *hi,
                  const float *step, int rounding, int center, int code_min, int code_max, int code_kind,
                  void *codes, float *deq, int nthreads);
int bb_decode_f32(const void *codes, const int64_t *starts, int nseg, int family, const float *lo, const float *hi,
                  const float *step, int center, int code_min, int code_max, int code_kind, float *out,
                  int nthreads);
int bb_minmax_f32(const float *w, const int64_t *starts, int nseg, float *lo, float *hi, float *amax);
"""


def _openmp_works(flag):
    """Whether the C compiler that setuptools will use compiles and links an OpenMP program with ``flag``."""
    import tempfile

    try:
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler
    except ImportError:  # pragma: no cover
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
    try:
        cc = new_compiler()
        customize_compiler(cc)
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "omp_probe.c")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
            objs = cc.compile([src], output_dir=d, extra_postargs=[flag])
            cc.link_executable(objs, os.path.join(d, "omp_probe"), extra_postargs=[flag])
        return True
    except Exception:
        return False


def _flags():
    """(compile args, link args): optimized, with OpenMP where the compiler supports it."""
    openmp = os.environ.get("BITBENCH_NO_OPENMP", "") in ("", "0")
    if sys.platform == "win32":
        return (["/O2"] + (["/openmp"] if openmp else [])), []
    if openmp and _openmp_works("-fopenmp"):
        return ["-O3", "-fopenmp"], ["-fopenmp"]
    return ["-O3"], []


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
_cflags, _ldflags = _flags()
ffibuilder.set_source(
    "bitbench.kernels._cpu_flip",
    '#include "flip_cpu.h"\n#include "quant_cpu.h"',
    sources=[_rel("flip_cpu.c"), _rel("quant_cpu.c")],
    include_dirs=[_rel(".")],
    depends=[_rel("flip_cpu.h"), _rel("quant_cpu.h")],
    # -ffp-contract=off: no fused multiply-add, so the fused quantizer rounds exactly like the torch path;
    # -fno-trapping-math: lets the clamps vectorize (no result changes: IEEE rounding is untouched)
    extra_compile_args=_cflags + (["-ffp-contract=off", "-fno-trapping-math"] if sys.platform != "win32" else []),
    extra_link_args=_ldflags,
    optional=True,  # a failed compile does not fail the install: kernels/ then uses the torch reference
)

if __name__ == "__main__":
    # Convenience: the same as `python setup.py build_ext --inplace` from the project root.
    import subprocess

    sys.exit(subprocess.call([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=_root))
