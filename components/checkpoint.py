"""Consolidate the newest complete training checkpoint into one file, then slice it (`seer ckpt`)."""

from kfp.dsl import Input, Model, Output

from components import seer_component


@seer_component
def consolidate_slice(
    run: Input[Model], consolidated: Output[Model], sliced: Output[Model], preset: str = ""
):
    """Newest complete checkpoint of the run → consolidated file (+ .json sidecar) → sliced checkpoint,
    both written next to the training output (`<run prefix>/consolidate-slice/`).

    Args:
        run: Descriptor of the pretraining output (checkpoints/iter-NNNNNNNN/).
        consolidated: Descriptor of one file with trunk + heads (sha256 in its sidecar).
        sliced: Descriptor of the sliced checkpoint folder: index.json + one file per tensor.
        preset: Fail unless the checkpoint was trained with this model preset ('' accepts any).
    """
    from seer import storage
    from seer.artifacts import metadata, read_descriptor, write_descriptor
    from seer.checkpoints import consolidate, slice_checkpoint
    from seer.errors import NotFoundError
    from seer.train.checkpoint import latest_complete

    trained = read_descriptor(run.uri, "run")
    ref = latest_complete(trained["uri"])
    if ref is None:
        raise NotFoundError(
            f"no complete checkpoint under {trained['uri']}/checkpoints; the pretrain step wrote none "
            "(train.checkpoint_every larger than train.iterations?)"
        )
    out = storage.join(trained["prefix"], "consolidate-slice")
    file_uri, folder_uri = storage.join(out, "consolidated.pt"), storage.join(out, "sliced")
    side = consolidate(ref.uri, file_uri, preset=preset or None)
    index = slice_checkpoint(file_uri, folder_uri)
    info = {"prefix": trained["prefix"], "preset": side["preset"], "iteration": side["iteration"]}
    info["sha256"] = side["sha256"]
    made = write_descriptor(
        consolidated.path, "checkpoint", file_uri, bytes=side["bytes"], source=ref.uri, **info
    )
    consolidated.metadata.update(metadata(made))
    made = write_descriptor(sliced.path, "sliced", folder_uri, index=index, **info)
    sliced.metadata.update(metadata(made))
    print(f"iteration {side['iteration']} of {ref.uri} → {file_uri} → {folder_uri}")
