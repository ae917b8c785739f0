"""The torchrun process group of a training run, or a no-op stand-in for one process."""

from __future__ import annotations

from typing import Callable

import torch

from camstat.errors import CamstatError


class Dist:
    """The torchrun process group (or a no-op stand-in for one process)."""

    def __init__(self, device: torch.device):
        from camstat.devices import distributed_rank

        self.rank, self.world = distributed_rank()
        self.created = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                if device.type == "cuda":
                    torch.cuda.set_device(device)
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                self.created = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        boxes = [None] * self.world
        dist.all_gather_object(boxes, obj)
        return boxes

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.created:
            import torch.distributed as dist

            dist.destroy_process_group()

    def on_main(self, fn: Callable, *args):
        """Run ``fn`` on rank 0; every rank gets its result or raises its CamstatError."""
        result, error = None, None
        if self.main:
            try:
                result = fn(*args)
            except CamstatError as exc:
                error = str(exc)
        result, error = self.broadcast((result, error))
        if error is not None:
            raise CamstatError(error)
        return result
