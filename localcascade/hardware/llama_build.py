"""The installed llama-cpp-python: version, GPU offload, backends - without loading a model.

llama_cpp is imported here, lazily, and only when no stand-in is passed: it loads native
libraries, which costs time the rest of the CLI does not need to pay.
"""

from __future__ import annotations

import ctypes
import re

from localcascade.hardware.facts import LlamaCppBuild
from localcascade.hardware.replay import llama_from_environment

# llama_print_system_info() writes "CUDA : ARCHS = 890 | ... | CPU : SSE3 = 1 | ...": each backend
# name is followed by " : ", each feature by " = ".
_BACKEND_RE = re.compile(r"(?:^|\|)\s*([A-Za-z][A-Za-z0-9_-]*) : ")


def backends_from_system_info(system_info: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_BACKEND_RE.findall(system_info)))


def registered_backends(llama) -> tuple[str, ...]:
    """Backend names from ggml's registry, which also lists backends without feature flags.
    Reached through llama_cpp's own handle on libggml; () when this build does not expose it.
    """
    try:
        lib = llama._ggml.libggml
        lib.ggml_backend_reg_count.restype = ctypes.c_size_t
        lib.ggml_backend_reg_get.restype = ctypes.c_void_p
        lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
        lib.ggml_backend_reg_name.restype = ctypes.c_char_p
        lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        names = []
        for i in range(lib.ggml_backend_reg_count()):
            name = lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i))
            if name:
                names.append(name.decode(errors="replace"))
        return tuple(names)
    except (AttributeError, OSError, ImportError):
        return ()


# "CUDA : ARCHS = 500,610,890 | USE_GRAPHS = 1 | ...": the architectures the CUDA backend was compiled for.
_CUDA_ARCHS_RE = re.compile(r"CUDA : ARCHS = ([\d,]+)")


def cuda_archs_from_system_info(system_info: str) -> tuple[int, ...]:
    match = _CUDA_ARCHS_RE.search(system_info)
    return tuple(int(a) for a in match.group(1).split(",") if a) if match else ()


def installed_wheel_tags() -> tuple[str, ...]:
    """The Tag lines of the installed llama-cpp-python's WHEEL file; () when it cannot be read."""
    from importlib import metadata

    try:
        text = metadata.distribution("llama_cpp_python").read_text("WHEEL") or ""
    except metadata.PackageNotFoundError:
        return ()
    return tuple(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:"))


def build(llama=None) -> LlamaCppBuild:
    """What the llama-cpp-python in this environment can do. ``llama`` is the llama_cpp module or a
    stand-in with __version__, llama_supports_gpu_offload() and llama_print_system_info().
    """
    if llama is None:
        llama = llama_from_environment()
    if llama is None:
        try:
            import llama_cpp as llama
            import llama_cpp._ggml  # noqa: F401  (the registry lives in libggml)
        except (ImportError, OSError, RuntimeError):
            return LlamaCppBuild()
    info = llama.llama_print_system_info()
    info = info.decode(errors="replace") if isinstance(info, bytes) else str(info or "")
    from_info = backends_from_system_info(info)
    backends = tuple(dict.fromkeys(registered_backends(llama) + from_info))
    # A recorded build carries its own wheel tags; the real module's come from its installed metadata.
    tags = llama.wheel_tags() if hasattr(llama, "wheel_tags") else installed_wheel_tags()
    return LlamaCppBuild(
        version=getattr(llama, "__version__", None),
        gpu_offload=bool(llama.llama_supports_gpu_offload()),
        backends=backends,
        system_info=info.strip(" |") or None,
        cuda_archs=cuda_archs_from_system_info(info),
        wheel_tags=tuple(tags),
    )
