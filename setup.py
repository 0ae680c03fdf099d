"""The native codec, built with the package (metadata: pyproject.toml).

aep.events.codec._native is optional: where no C compiler or Python headers
are found, the install goes on without it (setuptools warns) and the server
runs the Python reference codec, saying so in its log (server.codec=auto).
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

CODEC = Path("service/aep/events/codec")
SOURCES = [CODEC / "_native.c", CODEC / "codec_core.c", CODEC / "id_set.c"]
HEADERS = [CODEC / "codec_core.h", CODEC / "id_set.h"]


def source_digest() -> str:
    """The sources' digest, compiled in: tests refuse to run against a stale build."""
    digest = hashlib.sha256()
    for path in sorted(SOURCES + HEADERS):
        digest.update(path.read_bytes())
    return digest.hexdigest()


setup(
    ext_modules=[
        Extension(
            "aep.events.codec._native",
            sources=[str(path) for path in SOURCES],
            depends=[str(path) for path in HEADERS],
            define_macros=[("AEP_SOURCE_SHA256", f'"{source_digest()}"')],
            # No contraction into fused multiply-adds: the timestamp window is
            # compared in the same IEEE double operations as the Python rules.
            extra_compile_args=["-std=gnu11", "-O2", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
