"""Engines: where the stage functions run. Both run the same pure functions on the same shards,
so they give identical outputs (``tests/test_engine.py``).

* :class:`LocalEngine` runs every task in this process, one after the other. With a
  ``spill_dir`` each task's result is written to disk and read back only by the tasks that
  consume it, so memory stays bounded by one task's input and output (a shard of
  ``EngineConfig.batch_rows`` documents, or one shuffle partition), not by the corpus.
* :class:`RayEngine` submits every task to Ray (``ray.init(address=...)`` for a cluster, a local
  Ray with ``num_cpus`` otherwise). Task results stay in Ray's object store (which spills to
  disk by itself) and travel from the task that made them to the task that consumes them; the
  driver only holds references. A shuffle is a task with ``num_returns = partitions`` whose
  pieces are passed, one per partition, to the reducing tasks.

A task's arguments may be results of earlier tasks (:class:`Ref` here, ``ray.ObjectRef`` on
Ray) given as top-level arguments; both engines resolve them before calling the function.

Spilled results are pickled to files in a folder this process created and reads back itself;
nothing else is ever unpickled.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import EngineConfig


@dataclass(frozen=True)
class Ref:
    """A result of a :class:`LocalEngine` task: in memory, or the file it was spilled to."""

    value: Any = None
    path: str | None = None


class LocalEngine:
    """Tasks run in this process, in submission order (``workers`` is always 1)."""

    name = "local"

    def __init__(self, spill_dir: str | os.PathLike | None = None, partitions: int = 1):
        self.partitions = max(1, int(partitions))
        self._own_dir = False
        self.spill_dir = None
        if spill_dir is not None:
            self.spill_dir = str(spill_dir)
            os.makedirs(self.spill_dir, exist_ok=True)
        self._count = 0

    @property
    def workers(self) -> int:
        return 1

    def _wrap(self, value: Any) -> Ref:
        if self.spill_dir is None:
            return Ref(value=value)
        self._count += 1
        path = os.path.join(self.spill_dir, f"r{self._count:08d}.pkl")
        with open(path, "wb") as fh:
            pickle.dump(value, fh, protocol=5)
        return Ref(path=path)

    def _resolve(self, arg: Any) -> Any:
        if isinstance(arg, Ref):
            if arg.path is None:
                return arg.value
            with open(arg.path, "rb") as fh:  # our own spill file, written above
                return pickle.load(fh)  # noqa: S301
        return arg

    def submit(self, fn: Callable, *args: Any, num_returns: int = 1) -> Any:
        out = fn(*[self._resolve(a) for a in args])
        if num_returns == 1:
            return self._wrap(out)
        if len(out) != num_returns:
            raise RuntimeError(f"{fn.__name__} returned {len(out)} results, not {num_returns}")
        return [self._wrap(o) for o in out]

    def put(self, value: Any) -> Ref:
        return self._wrap(value)

    def get(self, refs: Any) -> Any:
        if isinstance(refs, list):
            return [self._resolve(r) for r in refs]
        return self._resolve(refs)

    def free(self, refs: Sequence[Any]) -> None:
        """Delete spilled results nobody needs any more."""
        for r in refs:
            if isinstance(r, Ref) and r.path:
                try:
                    os.unlink(r.path)
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        if self._own_dir and self.spill_dir:
            shutil.rmtree(self.spill_dir, ignore_errors=True)


class RayEngine:
    """Tasks run on Ray: a cluster at ``address``, or a local Ray started with ``num_cpus``."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        partitions: int | None = None,
    ):
        import ray

        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = num_cpus
            # the project's own packages travel to the workers (a cluster's nodes need govtune
            # installed, or a runtime_env with working_dir set by whoever starts the job)
            ray.init(**kwargs)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.partitions = int(partitions or max(1, 2 * cpus))
        self._remote: dict[tuple[Callable, int], Any] = {}

    @property
    def workers(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 1))

    def submit(self, fn: Callable, *args: Any, num_returns: int = 1) -> Any:
        key = (fn, num_returns)
        remote = self._remote.get(key)
        if remote is None:
            remote = self._remote[key] = self._ray.remote(num_returns=num_returns)(fn)
        return remote.remote(*args)

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def get(self, refs: Any) -> Any:
        return self._ray.get(refs)

    def free(self, refs: Sequence[Any]) -> None:
        """Ray frees an object once no reference to it is left; nothing to do."""

    def close(self) -> None:
        """The Ray runtime stays up for the next stage (``ray.shutdown()`` ends it)."""


Engine = LocalEngine | RayEngine


def make_engine(config: EngineConfig | None = None, spill_dir: str | None = None) -> Engine:
    """The engine ``config`` names (``local`` by default)."""
    config = config or EngineConfig()
    config.validate()
    if config.name == "ray":
        return RayEngine(config.address, config.num_cpus, config.partitions)
    return LocalEngine(spill_dir=spill_dir, partitions=config.partitions or 1)


def temporary_spill_dir(prefix: str = "govtune-spill-") -> str:
    return tempfile.mkdtemp(prefix=prefix)
