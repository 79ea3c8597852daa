#!/usr/bin/env bash
# Sets the project up on a fresh machine: the Debian packages that hold the default data (real text, images and
# speech; docs/data.md), then a virtual environment in .venv with the project (editable) and its test tools.
# Safe to run again; it only installs what is missing. PYTHON=python3.x picks another interpreter.
# Without root or apt (another OS), the data step is skipped with a warning and the datamodules fall back to
# pip-only sources.
set -euo pipefail
cd "$(dirname "$0")"

DEBIAN_DATA="dataset-fashion-mnist fortunes fortunes-min fonts-noto-color-emoji asterisk-core-sounds-en-wav asterisk-core-sounds-en"
BUILD_TOOLS="g++"  # the compiled CPU kernels (models/csrc); ninja comes from PyPI (requirements.txt)
# soundfile's platform-independent wheel (which an index may serve instead of the one bundling the library) loads
# the system's libsndfile.
LIBRARIES="libsndfile1"
AUSTEN_DIR=.cache/debian/janeaustenr
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    missing=$(for p in $DEBIAN_DATA $BUILD_TOOLS $LIBRARIES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
    if [ -n "$missing" ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
    # Jane Austen's novels, read straight from the R package's data file: no R needed (1.6 MB).
    if [ ! -f "$AUSTEN_DIR/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" ]; then
        mkdir -p .cache/debian
        (cd .cache/debian && apt-get download -qq r-cran-janeaustenr 2>/dev/null \
            && dpkg-deb -x r-cran-janeaustenr_*_all.deb janeaustenr && rm -f r-cran-janeaustenr_*_all.deb)
    fi
else
    echo "setup.sh: no root/apt here - skipping the Debian data packages; datamodules will use pip-only fallbacks" >&2
fi

if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
# torch==2.13.0 (requirements.txt) resolves to the CPU build on this kind of machine; see docs/gpu.md, "Install the kernels".
# uv installs the same versions as pip in a fraction of the time (here 15 s from an empty uv cache, pip 81 s from a
# filled pip cache). It does not read pip's configuration, so the indexes, find-links and constraints pip would use
# are passed to it; if uv cannot be installed or fails, pip does the install (pip's own notes while installing uv
# are not shown).
pip_settings_for_uv() {
    .venv/bin/python - <<'PY'
import subprocess
flags = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}
listed = subprocess.run([".venv/bin/python", "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
settings = {}  # key -> value; a PIP_* environment variable (":env:" lines) overrides the configuration files
for line in sorted(listed.splitlines(), key=lambda line: line.startswith(":env:")):
    name, _, value = line.partition("=")
    key = name.rsplit(".", 1)[-1]
    if key in flags:
        settings[key] = value.strip("'\"")
print(" ".join(f"{flags[k]} {v}" for k, value in settings.items() for v in value.split()))
PY
}
if ! { .venv/bin/python -m pip install --quiet --disable-pip-version-check uv 2>/dev/null \
    && .venv/bin/uv pip install --quiet --python .venv/bin/python --index-strategy unsafe-best-match \
        $(pip_settings_for_uv) -e ".[dev]"; }; then
    echo "setup.sh: uv could not install the project; installing with pip" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
fi
# Python keeps the compiled bytecode of each module it imports beside the module, unless PYTHONDONTWRITEBYTECODE is
# set (as in some CI images and sandboxes): then every process compiles torch's and Lightning's modules anew, about
# 7 s per process here. Setup's own Python steps run with it unset, starting with one that imports what a comparison,
# sampling and the tests import, so they leave that bytecode behind; nothing else is compiled.
unset PYTHONDONTWRITEBYTECODE
.venv/bin/python -c "import experiments.compare, experiments.sample, experiments.train, torch.utils.tensorboard, pytest"
# Build the compiled CPU kernels (selective scan, loss; once per machine, cached under torch's extension root) and prepare the default
# data (.cache/data: the text/image corpus of Transfusion and Chameleon, and the one with speech of three-modality,
# each with its tokenizers, image codebook and speech units) side by side, so that runs pay for none of it. If the
# kernels cannot build, runs fall back to torch's scan and loss and say so.
.venv/bin/python -c "from models import cpu_kernels; print('compiled CPU kernels:', 'ready' if cpu_kernels.available() else 'unavailable (' + cpu_kernels.load_error() + '); runs use the torch scan and loss')" &
kernels=$!
mkdir -p .cache
.venv/bin/python -m datamodules --settings transfusion,chameleon > .cache/prepare-image-text.log &
image_text=$!
.venv/bin/python -m datamodules --settings three_modality
wait "$image_text" && cat .cache/prepare-image-text.log
wait "$kernels"
