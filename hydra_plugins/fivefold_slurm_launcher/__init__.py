"""Hydra only instantiates launchers defined under the `hydra_plugins` namespace package: this names the
project's SLURM launcher (experiments/cluster/slurm_launcher.py) there for conf/hydra/launcher/slurm.yaml."""

from experiments.cluster.slurm_launcher import SlurmLauncher as _SlurmLauncher


class SlurmLauncher(_SlurmLauncher):
    """experiments.cluster.slurm_launcher.SlurmLauncher, registered as a Hydra plugin."""
