"""Collectives: the Communicator interface, algorithms, executor, cost model."""

from weft.collectives.communicator import Communicator, TorchCommunicator, Work

__all__ = ["Communicator", "TorchCommunicator", "Work"]
