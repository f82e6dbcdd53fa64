"""Where a model comes from: the built-in ``tiny``, a local folder, or the Hugging Face Hub; and the
one sentence a user can act on when it cannot be had."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import BackendError

if TYPE_CHECKING:
    import torch

TINY_MODEL = "tiny"


class ModelUnavailable(BackendError):
    """The model could not be found locally or fetched; the message says what to do."""


def download_model(model: str, cache_dir: Path | None = None) -> Path:
    """Fetch a model's weights ahead of time (``imagine download-model``, Docker builds); return its folder.

    ``tiny`` is built into ``cache_dir`` (default ``$IMAGINE_CACHE_DIR``); a local folder is
    returned as it is; a Hub id is downloaded (safetensors only) into ``cache_dir`` or the
    Hugging Face cache, where :func:`load_pipeline` finds it later.
    """
    if model == TINY_MODEL:
        from backend.tiny import tiny_model_path

        return tiny_model_path(cache_dir)
    if Path(model).is_dir():
        check_model_folder(Path(model))
        return Path(model)
    from backend.tiny import diffusers_module

    try:
        folder = diffusers_module().StableDiffusionPipeline.download(
            model, cache_dir=cache_dir, use_safetensors=True
        )
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(model_error_sentence(model, exc)) from exc
    return Path(folder)


def check_model_folder(folder: Path) -> None:
    if not (folder / "model_index.json").is_file():
        raise ModelUnavailable(f"The folder {folder} is not a diffusers model (no model_index.json).")


def model_error_sentence(model: str, exc: BaseException) -> str:
    """One sentence a user can act on, whatever diffusers and huggingface_hub raised."""
    if isinstance(exc, ValueError) and not isinstance(exc, OSError):
        return (
            f"IMAGINE_MODEL={model!r} is neither a local model folder nor a Hugging Face model id "
            "like CompVis/stable-diffusion-v1-4."
        )
    names = {type(e).__name__ for e in _exception_chain(exc)}
    if names & {"RepositoryNotFoundError", "GatedRepoError"}:
        return (
            f"The model {model!r} is not a public model on the Hugging Face Hub; check the name, "
            "or log in with `hf auth login` if it needs access."
        )
    if "EntryNotFoundError" in names or "safetensors" in str(exc).lower():
        return f"The model {model!r} has no safetensors weights; use a model published with safetensors."
    return (
        f"The model {model!r} is not in the local cache and the Hugging Face Hub could not be reached; "
        f"run `imagine download-model {model}` where the Hub is reachable, or set IMAGINE_MODEL=tiny "
        "for the built-in offline model."
    )


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def dtype_argument(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers 0.42 deprecates ``torch_dtype`` for ``dtype``; older releases know only ``torch_dtype``."""
    import diffusers
    from packaging.version import Version

    name = "dtype" if Version(diffusers.__version__).release >= (0, 42) else "torch_dtype"
    return {name: dtype}
