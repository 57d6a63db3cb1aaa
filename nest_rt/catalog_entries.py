"""The models manifest as typed, frozen objects, checked when it is read.

``parse_manifest`` turns the JSON of ``models_manifest.json`` into a ``Manifest``: one
``ModelEntry`` per model and one ``BackboneEntry`` per shared backbone. Every key is read
here, once: an optional key that is absent (or null) becomes ``None`` or an empty value, a key
nobody reads or a value of the wrong type stops the load with the key's path
(``models['meg-things_meg_1-vit_b_32'].variants.default: ...``), so a malformed entry fails
when the catalog is first used, never halfway through an encode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from .errors import ModelLoadError

SELECTION_KINDS = ("mask", "names", "metadata_equals", "metadata_label", "metadata_indices")
COMBINE_RULES = ("one", "union", "concatenate")
# Lists of names a selection rule may refer to by key ("choices": "rois").
NAME_LISTS = ("rois", "channels", "sensor_regions", "sensor_prefixes")


class ManifestError(ModelLoadError, ValueError):
    """The models manifest is malformed; the message names the key's path."""


class Legacy(NamedTuple):
    """The (modality, train_dataset, model) triple of NEST's legacy API and folder names."""
    modality: str
    train_dataset: str
    model: str


@dataclass(frozen=True)
class Axis:
    name: str
    size: int
    labels: str | None = None  # the metadata key holding this axis's labels

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, **({"labels": self.labels} if self.labels else {})}


@dataclass(frozen=True)
class OutputArray:
    """One output array: its axes, and which regression blocks fill it (stacked on block_axis
    when there are several, e.g. EEG's four repetitions)."""
    name: str
    blocks: tuple[int, ...]
    axes: tuple[Axis, ...]
    block_axis: str | None = None

    def axis(self, name: str) -> Axis | None:
        return next((axis for axis in self.axes if axis.name == name), None)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "blocks": list(self.blocks),
                **({"block_axis": self.block_axis} if self.block_axis else {}),
                "axes": [axis.as_json() for axis in self.axes]}


@dataclass(frozen=True)
class SelectionRule:
    """How one selection key picks positions along an output axis."""
    kind: str
    axis: str
    output: str | None = None  # the one output array it acts on (default: every array with the axis)
    names: str | None = None  # "names": the name list whose order the axis has
    choices: str | None = None  # the name list of valid values
    metadata: str | None = None  # metadata key (may hold {output} and {name})
    labels: str | None = None  # "metadata_label": the metadata key of the labels
    aliases: Mapping[str, str] = field(default_factory=dict)
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stacked:
    """Several variants encoded as one model, stacked on ``axis`` (MEG's train_splits)."""
    parameter: str
    axis: str
    values: Mapping[str, Any]  # parameter value -> a variant, or a list of variants


@dataclass(frozen=True)
class Variants:
    """Models trained several ways per subject (MEG: a training split)."""
    parameter: str
    values: tuple[str, ...]
    default: str
    stacked: Stacked | None = None


@dataclass(frozen=True)
class HeadBlock:
    regression: str  # key of the regression parameters in the toolkit's weights dict
    pca: str | None = None  # its own PCA, where each block has one


@dataclass(frozen=True)
class Head:
    """Where a linear model's weights dict holds its scaler, PCA and regression blocks."""
    scaler: str
    blocks: tuple[HeadBlock, ...]
    shared_pca: str | None = None  # absent where every block names its own PCA


@dataclass(frozen=True)
class Times:
    """EEG's time points: the first (seconds from stimulus onset), the step between two, how many."""
    start_s: float
    step_s: float
    count: int


@dataclass(frozen=True)
class ModelEntry:
    """One model of the catalog. ``head`` is None for the fwRF (not a backbone and a head)."""
    id: str
    alias: str
    family: str
    modality: str
    catalog_modality: str
    catalog_dataset: str
    description: str
    example_usage: str
    subjects: tuple[int | str, ...]
    toolkit_files: Mapping[str, Any]  # key -> a path pattern, or patterns tried in order
    bundle_files: Mapping[str, str]
    aliases: tuple[str, ...] = ()
    legacy: Legacy | None = None
    subject_aliases: Mapping[str, int | str] = field(default_factory=dict)
    backbone: str | None = None
    head: Head | None = None
    outputs: tuple[OutputArray, ...] = ()
    selection: Mapping[str, SelectionRule] = field(default_factory=dict)
    combine: Mapping[str, str] = field(default_factory=dict)
    variants: Variants | None = None
    name_lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    split_rois: tuple[str, ...] = ()
    voxels_subject_1: Mapping[str, int] = field(default_factory=dict)
    input_size: int | None = None
    output_description: str | None = None
    times: Times | None = None
    repetitions: int | None = None
    vertices_per_hemisphere: int | None = None

    @property
    def is_linear(self) -> bool:
        return self.head is not None

    @property
    def rois(self) -> tuple[str, ...]:
        return self.name_lists.get("rois", ())

    def names(self, key: str) -> tuple[str, ...]:
        """A list of names a selection rule refers to ('channels', 'sensor_regions', ...)."""
        return self.name_lists[key]


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    graph: str  # its graph's path inside a bundle
    features: int  # features per image
    images_per_call: int  # measured: the images per run of its graph that encode fastest
    torchvision_weights: str | None = None
    torch_seed: int | None = None


@dataclass(frozen=True)
class Manifest:
    format: str
    description: str
    models: Mapping[str, ModelEntry]
    backbones: Mapping[str, BackboneEntry]


class _Fields:
    """Reads the keys of one JSON object, each once, naming ``path`` in every error."""

    def __init__(self, path: str, value: Any):
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: expected an object, got {type(value).__name__}")
        self.path, self._value, self._read = path, value, set()

    def get(self, key: str, kind, required: bool = True, default: Any = None) -> Any:
        self._read.add(key)
        value = self._value.get(key)
        if value is None:
            if required:
                raise ManifestError(f"{self.path}.{key}: missing")
            return default
        return kind(f"{self.path}.{key}", value)

    def done(self) -> None:
        unknown = sorted(set(self._value) - self._read)
        if unknown:
            raise ManifestError(f"{self.path}: unknown keys {unknown}")


def _typed(*types: type, name: str):
    def check(path: str, value: Any) -> Any:
        if not isinstance(value, types) or isinstance(value, bool):
            raise ManifestError(f"{path}: expected {name}, got {type(value).__name__} ({value!r:.60})")
        return value
    return check


_str = _typed(str, name="a string")
_int = _typed(int, name="an integer")
_number = _typed(int, float, name="a number")


def _list_of(item):
    def check(path: str, value: Any) -> tuple:
        if not isinstance(value, list):
            raise ManifestError(f"{path}: expected a list, got {type(value).__name__}")
        return tuple(item(f"{path}[{index}]", element) for index, element in enumerate(value))
    return check


def _map_of(item):
    def check(path: str, value: Any) -> Mapping:
        if not isinstance(value, dict):
            raise ManifestError(f"{path}: expected an object, got {type(value).__name__}")
        return MappingProxyType({key: item(f"{path}[{key!r}]", element) for key, element in value.items()})
    return check


def _str_or_int(path: str, value: Any) -> int | str:
    return _typed(int, str, name="a string or an integer")(path, value)


def _pattern_or_patterns(path: str, value: Any) -> str | tuple[str, ...]:
    return _list_of(_str)(path, value) if isinstance(value, list) else _str(path, value)


def _object(build):
    """A checker that reads an object with ``build(fields)`` and refuses keys it left unread."""
    def check(path: str, value: Any):
        fields = _Fields(path, value)
        result = build(fields)
        fields.done()
        return result
    return check


_legacy = _object(lambda f: Legacy(f.get("modality", _str), f.get("train_dataset", _str), f.get("model", _str)))
_axis = _object(lambda f: Axis(f.get("name", _str), f.get("size", _int), f.get("labels", _str, False)))
_output = _object(lambda f: OutputArray(f.get("name", _str), f.get("blocks", _list_of(_int)),
                                        f.get("axes", _list_of(_axis)), f.get("block_axis", _str, False)))
_head_block = _object(lambda f: HeadBlock(f.get("regression", _str), f.get("pca", _str, False)))
_head = _object(lambda f: Head(f.get("scaler", _str), f.get("blocks", _list_of(_head_block)),
                               f.get("shared_pca", _str, False)))
_times = _object(lambda f: Times(f.get("start_s", _number), f.get("step_s", _number), f.get("count", _int)))
_stacked = _object(lambda f: Stacked(f.get("parameter", _str), f.get("axis", _str),
                                     f.get("values", _map_of(lambda p, v: v))))
_variants = _object(lambda f: Variants(f.get("parameter", _str), f.get("values", _list_of(_str)),
                                       f.get("default", _str), f.get("stacked", _stacked, False)))
_selection_rule = _object(lambda f: SelectionRule(
    kind=f.get("kind", _str), axis=f.get("axis", _str), output=f.get("output", _str, False),
    names=f.get("names", _str, False), choices=f.get("choices", _str, False),
    metadata=f.get("metadata", _str, False), labels=f.get("labels", _str, False),
    aliases=f.get("aliases", _map_of(_str), False, MappingProxyType({})),
    excludes=f.get("excludes", _list_of(_str), False, ())))


def _backbone(name: str):
    return _object(lambda f: BackboneEntry(name, f.get("graph", _str), f.get("features", _int),
                                           f.get("images_per_call", _int), f.get("torchvision_weights", _str, False),
                                           f.get("torch_seed", _int, False)))


def _model_entry(model_id: str, path: str, value: Any) -> ModelEntry:
    f = _Fields(path, value)
    empty = MappingProxyType({})
    entry = ModelEntry(
        id=model_id, alias=f.get("alias", _str), family=f.get("family", _str), modality=f.get("modality", _str),
        catalog_modality=f.get("catalog_modality", _str), catalog_dataset=f.get("catalog_dataset", _str),
        description=f.get("description", _str), example_usage=f.get("example_usage", _str),
        subjects=f.get("subjects", _list_of(_str_or_int)),
        toolkit_files=f.get("toolkit_files", _map_of(_pattern_or_patterns)),
        bundle_files=f.get("bundle_files", _map_of(_str)),
        aliases=f.get("aliases", _list_of(_str), False, ()), legacy=f.get("legacy", _legacy, False),
        subject_aliases=f.get("subject_aliases", _map_of(_str_or_int), False, empty),
        backbone=f.get("backbone", _str, False), head=f.get("head", _head, False),
        outputs=f.get("outputs", _list_of(_output), False, ()),
        selection=f.get("selection", _map_of(_selection_rule), False, empty),
        combine=f.get("combine", _map_of(_str), False, empty), variants=f.get("variants", _variants, False),
        name_lists=MappingProxyType({key: names for key in NAME_LISTS
                                     if (names := f.get(key, _list_of(_str), False)) is not None}),
        split_rois=f.get("split_rois", _list_of(_str), False, ()),
        voxels_subject_1=f.get("voxels_subject_1", _map_of(_int), False, empty),
        input_size=f.get("input_size", _int, False), output_description=f.get("output_description", _str, False),
        times=f.get("times", _times, False), repetitions=f.get("repetitions", _int, False),
        vertices_per_hemisphere=f.get("vertices_per_hemisphere", _int, False))
    f.done()
    return entry


def _check_model(path: str, entry: ModelEntry, backbones: Mapping[str, BackboneEntry]) -> None:
    """What the code relies on across keys: a linear model's backbone, outputs and selection
    rules fit together; the fwRF (no head) describes its output in words."""
    def require(condition: bool, where: str, problem: str) -> None:
        if not condition:
            raise ManifestError(f"{path}{where}: {problem}")
    linear = entry.head is not None
    require(linear == (entry.backbone is not None), "", "a model has both 'backbone' and 'head', or neither")
    if not linear:
        require(entry.output_description is not None, ".output_description", "missing (a model without outputs)")
        return
    require(entry.backbone in backbones, ".backbone", f"{entry.backbone!r} is not in 'backbones' ({sorted(backbones)})")
    require(bool(entry.outputs), ".outputs", "missing or empty")
    blocks = len(entry.head.blocks)
    require(entry.head.shared_pca is not None or all(block.pca for block in entry.head.blocks), ".head",
            "without a shared_pca every block names its own pca")
    for index, output in enumerate(entry.outputs):
        require(all(0 <= block < blocks for block in output.blocks), f".outputs[{index}].blocks",
                f"blocks are numbered 0..{blocks - 1} (head.blocks)")
    for key, rule in entry.selection.items():
        where = f".selection[{key!r}]"
        require(rule.kind in SELECTION_KINDS, f"{where}.kind", f"{rule.kind!r} is not one of {SELECTION_KINDS}")
        require(any(o.axis(rule.axis) for o in entry.outputs if rule.output in (None, o.name)), f"{where}.axis",
                f"no output array has the axis {rule.axis!r}")
        for named in (rule.names, rule.choices):
            require(named is None or named in entry.name_lists, where, f"names the list {named!r}, not in the entry")
    for axis, rule in entry.combine.items():
        require(rule in COMBINE_RULES, f".combine[{axis!r}]", f"{rule!r} is not one of {COMBINE_RULES}")
    if entry.variants:
        require(entry.variants.default in entry.variants.values, ".variants.default",
                f"{entry.variants.default!r} is not one of the values {list(entry.variants.values)}")


def parse_manifest(data: Any, source: str = "models_manifest.json") -> Manifest:
    """The manifest as typed objects; ManifestError names the first malformed key's path."""
    top = _Fields(source, data)
    backbones = MappingProxyType({name: _backbone(name)(f"{source}.backbones[{name!r}]", value)
                                  for name, value in top.get("backbones", _map_of(lambda p, v: v)).items()})
    raw_models = top.get("models", _map_of(lambda p, v: v))
    models = {}
    for model_id, value in raw_models.items():
        path = f"{source}.models[{model_id!r}]"
        if len(model_id.split("-")) != 3:
            raise ManifestError(f"{path}: a model id is MODALITY-DATASET-MODEL (three parts joined by '-')")
        models[model_id] = _model_entry(model_id, path, value)
        _check_model(path, models[model_id], backbones)
    manifest = Manifest(top.get("format", _str), top.get("description", _str), MappingProxyType(models), backbones)
    top.done()
    return manifest
