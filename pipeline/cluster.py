"""What a cluster run asks of the cluster: the image every task runs on, the train tasks'
resources, the volumes mounted. Plain values, no KFP: the CLI's flags read their defaults
here without loading the pipeline's SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kfp.dsl import PipelineTask

# The image every component runs on in a cluster (Dockerfile.train); set in one place.
TRAIN_IMAGE = "ghcr.io/fer-pipeline/fer-train:0.1.0"


@dataclass(frozen=True)
class TrainResources:
    """What each train task asks the cluster for. ``accelerator_count=0``: no accelerator."""

    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = 1
    cpu_request: str = "4"
    memory_request: str = "16G"

    def __post_init__(self) -> None:
        if self.accelerator_count < 0:
            raise ValueError(f"accelerator_count must be >= 0, got {self.accelerator_count}")
        if self.accelerator_count and not self.accelerator_type:
            raise ValueError("an accelerator count needs an accelerator type")

    def apply(self, task: PipelineTask) -> PipelineTask:
        """Set these CPU, memory and accelerator requests on the train ``task``; return ``task``."""
        task.set_cpu_request(self.cpu_request).set_memory_request(self.memory_request)
        if self.accelerator_count:
            task.set_accelerator_type(self.accelerator_type)
            task.set_accelerator_limit(self.accelerator_count)
        return task


def parse_volume(spec: str) -> tuple[str, str]:
    """``"claim:/mount/path"`` -> ``("claim", "/mount/path")``."""
    claim, sep, path = spec.partition(":")
    if not sep or not claim or not path.startswith("/"):
        raise ValueError(f"a volume is CLAIM:/ABSOLUTE/PATH, got {spec!r}")
    return claim, path
