#!/usr/bin/env bash
# Install Label Studio into its own environment, .venv-labelstudio, for the integration test
# (tests/test_label_studio.py finds it there). It is kept apart from .venv because it pins its
# own Django, pandas and numpy versions; the test talks to it over HTTP only.
set -euo pipefail
cd "$(dirname "$0")/.."
# The version the round-trip test was written against; newer 1.x versions should also work.
LABEL_STUDIO_VERSION="${LABEL_STUDIO_VERSION:-1.23.2}"
if [ ! -x .venv-labelstudio/bin/python ]; then
  python3 -m venv .venv-labelstudio
fi
.venv-labelstudio/bin/python -m pip install --quiet --upgrade pip
.venv-labelstudio/bin/python -m pip install --quiet "label-studio==${LABEL_STUDIO_VERSION}"
