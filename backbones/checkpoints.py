"""Finding a checkpoint folder: a local folder, or a repo id in the Hugging Face cache (offline).

Free of torch, so that `ovprobe` refuses a checkpoint path that is a file or does not exist before torch
and the backbones are imported (`probe.run.schema.check_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path


class CheckpointError(RuntimeError):
    pass


def resolve_checkpoint_dir(folder_or_repo_id: str | Path) -> Path:
    """A local folder as given, else the newest snapshot of a repo id in the Hugging Face cache.

    Never downloads: weights are fetched by the user beforehand, so a run on a cluster node
    without network behaves the same as one with it.
    """
    path = Path(folder_or_repo_id).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise CheckpointError(
            f"checkpoint {path} is a file; pass the folder that holds it with its config.json: "
            f"backbone.args.checkpoint={path.parent}"
        )
    repo_id = str(folder_or_repo_id)
    if repo_id.count("/") != 1 or path.exists():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as err:  # the hub raises several types for "not in the cache"
        raise CheckpointError(
            f"weights for {repo_id!r} are neither a local folder nor in the Hugging Face cache "
            f"({HF_HUB_CACHE}). Download them first, e.g. `hf download {repo_id}` (fills the cache) or "
            f"`hf download {repo_id} --local-dir DIR` and pass DIR as the checkpoint."
        ) from err
