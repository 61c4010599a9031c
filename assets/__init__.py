"""Dagster assets: a thin layer over quality_models/, training/ and evaluation/."""

import warnings

import dagster as dg

# Two APIs Dagster marks beta/preview are used on purpose (finetune's multi-to-single-dimension
# partition mapping, Pipes' writer count); their warnings would bury every log line.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
