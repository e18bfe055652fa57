"""fedmpi: Federated Averaging (McMahan et al., 2017) as an MPI batch job."""

__version__ = "0.1.0"
