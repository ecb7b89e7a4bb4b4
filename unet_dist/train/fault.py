"""The test-only fault hook: a worker recorder that kills or breaks one worker at one step.

``UNET_DIST_FAULT="rank=1,epoch=2,step=1"`` kills that worker once (a lost worker: Ray Train restarts the group
and the run resumes); ``...,raise=TEXT`` raises ``RuntimeError(TEXT)`` there instead, every time (a deterministic
bug), and ``...,raise=TEXT,kind=data`` a DataError (a user error, which is not retried);
``...,if=model.unpooling:bilinear`` arms it only in runs whose config has that value (one trial of a campaign).
The driver reads the variable (:func:`~unet_dist.train.trainer.default_recorders`) and hands the hook to the
workers with the other recorders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from unet_dist.config import Config
from unet_dist.errors import DataError
from unet_dist.storage import Location
from unet_dist.train.recorder import WorkerContext, WorkerRecorder

FAULT_ENV = "UNET_DIST_FAULT"


@dataclass(frozen=True)
class Fault:
    """Where the fault fires (rank, epoch, step) and what it does; a recorder spec (``create``)."""

    rank: int
    epoch: int
    step: int
    message: str | None = None
    kind: str = "runtime"
    only_if: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Fault | None":
        if not text:
            return None
        kv = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        return cls(int(kv.get("rank", 0)), int(kv.get("epoch", 0)), int(kv.get("step", 0)), kv.get("raise"),
                   kv.get("kind", "runtime"), kv.get("if"))

    @classmethod
    def from_env(cls) -> "Fault | None":
        return cls.parse(os.environ.get(FAULT_ENV))

    def armed(self, cfg: Config) -> bool:
        if not self.only_if:
            return True
        key, _, value = self.only_if.partition(":")
        section, _, field = key.partition(".")
        return str(getattr(getattr(cfg, section), field)) == value

    def create(self, ctx: WorkerContext) -> "FaultRecorder | None":
        return FaultRecorder(self, ctx) if ctx.rank == self.rank and self.armed(ctx.cfg) else None

    def maybe_die(self, run: Location, rank: int, epoch: int, step: int) -> None:
        if (rank, epoch, step) != (self.rank, self.epoch, self.step):
            return
        if self.message is not None:
            raise (DataError if self.kind == "data" else RuntimeError)(self.message)
        marker = run / f".fault-r{rank}-e{epoch}-s{step}"
        if marker.exists():
            return
        marker.write_text("fired")
        os._exit(1)


class FaultRecorder(WorkerRecorder):
    """The fault on its worker: checked before every step."""

    def __init__(self, fault: Fault, ctx: WorkerContext) -> None:
        self.fault, self.run, self.rank = fault, ctx.run.loc, ctx.rank

    def before_step(self, epoch: int, step: int) -> None:
        self.fault.maybe_die(self.run, self.rank, epoch, step)
