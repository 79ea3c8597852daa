#!/usr/bin/env bash
# Sets the project up on a fresh machine: a virtual environment in .venv holding the project (editable) and its
# test tools. Safe to run again; it only installs what is missing. PYTHON=python3.x picks another interpreter.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch==2.13.0 (requirements.txt) resolves to the CPU build on this kind of machine; see README "GPU install".
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
