"""Collectives: the Communicator interface, schedules (ring, double binary tree,
spanning-tree packing), cost model, executor, autotuner, DDP hook."""

from weft.collectives.communicator import Communicator, TorchCommunicator, Work

__all__ = ["Communicator", "TorchCommunicator", "Work", "WeftCommunicator"]


def __getattr__(name):
    if name == "WeftCommunicator":
        from weft.collectives.weft_comm import WeftCommunicator

        return WeftCommunicator
    raise AttributeError(name)
