"""Gin configuration files shipped with instruct_jax (models/, runs/, partitioning/, experiments/)."""
import os

ROOT = os.path.dirname(os.path.abspath(__file__))
