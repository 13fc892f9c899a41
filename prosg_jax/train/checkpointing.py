"""Orbax checkpoints of one training stage: state, data-iterator state and metadata.

Layout: ``<workdir>/checkpoints/<stage>/<step>/{state,data,meta}``, written by
an ``orbax.checkpoint.CheckpointManager`` that keeps the newest N. A step
directory appears only once complete, so a restart always resumes from the
latest *complete* checkpoint. ``data`` is the grain iterator's JSON state (one
file per process); ``meta`` records what must not change across a restart
(model shape, ProSG config, data settings) plus the full config for reference.
"""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from prosg_jax.errors import UserError


class StageCheckpoints:
    """The checkpoints of one stage in ``directory``."""

    def __init__(self, directory: str | Path, keep: int):
        self.directory = Path(directory).absolute()
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max(1, keep), create=True, enable_async_checkpointing=False
            ),
            item_names=("state", "data", "meta"),
        )

    def latest(self) -> int | None:
        """The newest complete step, or None."""
        return self._mngr.latest_step()

    def read_meta(self, step: int) -> dict:
        out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def save(self, step: int, state, iterator, meta: dict) -> None:
        """Writes a complete checkpoint of ``step`` (blocking)."""
        self._mngr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(iterator),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self._mngr.wait_until_finished()

    def restore(self, step: int, abstract_state, iterator=None):
        """The state saved at ``step`` (placed like ``abstract_state``); ``iterator`` resumes."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        return self._mngr.restore(step, args=ocp.args.Composite(**items))["state"]

    def close(self) -> None:
        self._mngr.close()


def check_meta(saved: dict, current: dict, where: Path) -> None:
    """Fails before any step when the config contradicts the checkpoint it would resume."""
    for key, what in (("model", "config.model"), ("prosg", "config.prosg"), ("data", "the data")):
        a, b = saved.get(key), current.get(key)
        if a == b:
            continue
        diff = sorted(
            k for k in set(a or {}) | set(b or {}) if (a or {}).get(k) != (b or {}).get(k)
        )
        details = ", ".join(
            f"{k}: {(b or {}).get(k)!r} (checkpoint: {(a or {}).get(k)!r})" for k in diff
        )
        raise UserError(
            f"{what} does not match the checkpoint in {where}: {details}; "
            "restore the config or use another --workdir"
        )


def abstract(tree, shardings):
    """``ShapeDtypeStruct``s of ``tree`` carrying the target shardings."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
