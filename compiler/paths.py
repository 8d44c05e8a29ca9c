"""Where the project's own data lives (specs, templates, catalogue, schemas).

In the repository they are top-level folders beside compiler/; in an installed distribution they
are package data beside defc/compiler/ (pyproject maps the folders under `defc`): either way the
folder above this package holds them."""
from __future__ import annotations

import os

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS_DIR = os.environ.get("DEFC_SPECS_DIR") or os.path.join(PROJECT_ROOT, "specs")
TEMPLATES_DIR = os.environ.get("DEFC_TEMPLATES_DIR") or os.path.join(PROJECT_ROOT, "templates")
CATALOGUE_DIR = os.path.join(PROJECT_ROOT, "catalogue")
SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
# an installed distribution (no checkout around it): its specs and templates are not the user's to edit
INSTALLED = not os.path.exists(os.path.join(PROJECT_ROOT, "pyproject.toml"))
MODEL_FACTS = "_model_facts.yaml"
DEFAULT_OUT = os.path.join("tmp", "flashinfer-trace")
DEFAULT_COOKBOOK = os.path.join("tmp", "sgl-cookbook")
