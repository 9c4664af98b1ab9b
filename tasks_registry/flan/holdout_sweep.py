"""FLAN's leave-one-cluster-out protocol as a recipe for instruct_jax's holdout sweep.

`instruct-jax sweep flan-holdout` finds this RECIPE by name, so the library
stays free of registry imports.
"""
from instruct_jax.experiments import holdout_sweep
from tasks_registry.flan import clusters
from tasks_registry.flan import mixtures
from tasks_registry.flan import tasks


RECIPE = holdout_sweep.HoldoutRecipe(
    name="FLAN",
    clusters=tuple(clusters.CLUSTERS),
    mixture_name=mixtures.mixture_name,
    default_prefix=tasks.DEFAULT_PREFIX,
    cluster_table="tasks_registry.flan.clusters.CLUSTERS",
    experiment_gin="experiments/flan/holdout_{cluster}.gin",
    clusters_source="tasks_registry/flan/clusters.py",
)
