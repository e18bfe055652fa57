"""Federated algorithms written on fedmpi's public interface (docs/extending.md), outside the package."""
