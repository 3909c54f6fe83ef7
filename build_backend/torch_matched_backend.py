"""PEP 517 backend: setuptools, built against the torch of the target environment.

A torch extension is tied to the exact torch it was compiled against.  With
build isolation, pip would install some torch release into a throw-away build
environment, and the resulting binary fails to import (undefined symbols)
next to the torch the user actually has.  This backend asks the interpreter
that pip is installing into -- with pip's build-environment path overrides
removed -- where its torch lives, and puts that torch on the build's path
(after the build environment's own packages).  Only when that interpreter has
no torch does the build ask pip for one; setup.py then pins the wheel to the
torch version it was built against.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from setuptools import build_meta as _setuptools

_PROBE = (
    "import json, os, torch; print(json.dumps({'version': torch.__version__, "
    "'site': os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))}))"
)


def _host_torch() -> dict | None:
    """{'version', 'site'} of the torch installed for this interpreter, or None."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


_HOST_TORCH = _host_torch()
if _HOST_TORCH is not None:
    print(f"translution_ext: building against the installed torch {_HOST_TORCH['version']} "
          f"({_HOST_TORCH['site']})", file=sys.stderr)
    if _HOST_TORCH["site"] not in sys.path:
        sys.path.append(_HOST_TORCH["site"])
else:
    print("translution_ext: no torch installed in the target environment; the build will "
          "install one and pin the wheel to it", file=sys.stderr)


def _extra_requires() -> list[str]:
    # setuptools' own hook would run setup.py, which imports torch: answer directly
    # (setup.py declares no setup_requires, so setuptools would add nothing).
    return [] if _HOST_TORCH is not None else ["torch"]


def get_requires_for_build_wheel(config_settings=None):
    return _extra_requires()


def get_requires_for_build_editable(config_settings=None):
    return _extra_requires()


def get_requires_for_build_sdist(config_settings=None):
    return _setuptools.get_requires_for_build_sdist(config_settings)


prepare_metadata_for_build_wheel = _setuptools.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_wheel = _setuptools.build_wheel
build_editable = _setuptools.build_editable
build_sdist = _setuptools.build_sdist
