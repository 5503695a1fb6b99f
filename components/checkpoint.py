"""Consolidate the newest complete training checkpoint into one file, then slice it (`seer ckpt`)."""

from kfp.dsl import Input, Model, Output

from components import seer_component


@seer_component
def consolidate_slice(
    run: Input[Model], consolidated: Output[Model], sliced: Output[Model], preset: str = ""
):
    """Newest complete checkpoint of the run → consolidated file (+ .json sidecar) → sliced checkpoint.

    Args:
        run: Pretraining output folder (checkpoints/iter-NNNNNNNN/).
        consolidated: One file with trunk + heads, sha256 in its sidecar.
        sliced: Sliced checkpoint folder: index.json + one file per tensor.
        preset: Fail unless the checkpoint was trained with this model preset ('' accepts any).
    """
    from seer.checkpoints import consolidate, slice_checkpoint
    from seer.errors import NotFoundError
    from seer.train.checkpoint import latest_complete

    ref = latest_complete(run.uri)
    if ref is None:
        raise NotFoundError(
            f"no complete checkpoint under {run.uri}/checkpoints; the pretrain step wrote none "
            "(train.checkpoint_every larger than train.iterations?)"
        )
    side = consolidate(ref.uri, consolidated.path, preset=preset or None)
    index = slice_checkpoint(consolidated.path, sliced.path)
    info = {"preset": side["preset"], "iteration": side["iteration"], "sha256": side["sha256"]}
    consolidated.metadata.update({**info, "bytes": side["bytes"], "source": ref.uri})
    sliced.metadata.update({**info, "index": index.replace(sliced.path, sliced.uri, 1)})
    print(f"iteration {side['iteration']} of {ref.uri} → {consolidated.uri} → {sliced.uri}")
