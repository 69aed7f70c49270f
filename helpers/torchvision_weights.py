"""torchvision's published ImageNet weights for this project's Keras AlexNet and GoogLeNet.

torchvision publishes its ImageNet weights as ``.pth`` files written by ``torch.save``. This
module reads such a file *without* torch (:func:`read_pth`), maps its state dict onto the layer
names and weight layouts of ``helpers.models.AlexNet`` / ``helpers.models.GoogLeNet``
(:func:`convert`), and writes a Keras 2 "legacy layout" ``.h5`` file (:func:`write_keras_h5`)
that ``helpers.models.load_h5_weights_by_name`` loads by layer name. One converted file serves
the model with and without its ImageNet top (layers only in the file are ignored there).
:func:`ensure_keras_weights` does all of it in Keras' cache folder, downloading the ``.pth``
when it is missing.

Why a restricted unpickler: a ``.pth`` file is a Python pickle, and unpickling can call any
importable function (``os.system``, ``builtins.eval``, ...) named in the file, so loading a
downloaded file with plain ``pickle`` can run arbitrary code. :func:`read_pth` uses an
unpickler that resolves only the handful of names that rebuild tensors and ordered dicts, each
replaced by a function of this module; a file that names anything else is refused
(:class:`UnsafePickleError`) before anything it names is called.

Input conventions (``TorchvisionFile.normalisation``): ``"torch"`` is ``(x / 255 - mean) / std``
with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), RGB; ``"tf"`` is
``x / 127.5 - 1``, RGB.

Only numpy, h5py and the standard library are imported here (no torch, no Keras).
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from helpers.downloads import sha256_file

TORCHVISION_URL = "https://download.pytorch.org/models/"
DOWNLOAD_TIMEOUT_S = 30.0  # seconds without progress on the socket before a download gives up

# Legacy (non-zip) torch.save format: this number, the protocol version, then the main pickle.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the "torch" normalisation, RGB
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither in Keras' cache nor downloadable (offline), or none exist."""


class ChecksumMismatchError(WeightsUnavailableError):
    """A ``.pth`` file whose SHA-256 does not start with the prefix its published name carries."""


class PthFormatError(ValueError):
    """A file that is not a readable torch ``.pth`` state dict (truncated, other format, ...)."""


class UnsafePickleError(PthFormatError):
    """A ``.pth`` pickle that references a global other than the tensor-rebuilding ones."""


class WeightsConversionError(ValueError):
    """A state dict that does not fit the Keras architecture (missing, extra or mis-shaped key)."""


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TorchvisionFile:
    """One published torchvision weights file and the Keras file converted from it."""

    name: str  # the architecture, a key of helpers.models.BACKBONES: "alexnet" or "googlenet"
    display_name: str
    file_name: str  # the published .pth name, "<arch>-<sha256 prefix>.pth"
    sha256_prefix: str  # the hex digits in the name; torch.hub checks the download against them
    size_mb: int  # about how many MB the .pth is (for messages)
    keras_file: str  # the converted legacy-layout .h5 in Keras' cache folder
    normalisation: str  # "torch" or "tf": see the module docstring
    url_base: str = TORCHVISION_URL
    input_size: tuple[int, int] = (224, 224)  # torchvision's evaluation crop

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{1,64}", self.sha256_prefix):
            raise ValueError(f"sha256_prefix must be lower-case hex digits, got "
                             f"{self.sha256_prefix!r}")
        if f"-{self.sha256_prefix}." not in self.file_name:
            raise ValueError(f"{self.file_name}: the name must carry its SHA-256 prefix "
                             f"-{self.sha256_prefix}. as torch.hub expects")
        if self.normalisation not in ("torch", "tf"):
            raise ValueError(f"normalisation must be 'torch' or 'tf', got {self.normalisation!r}")

    @property
    def url(self) -> str:
        """Where the ``.pth`` is published."""
        return self.url_base + self.file_name


TORCHVISION_FILES: dict[str, TorchvisionFile] = {
    # torchvision.models.AlexNet_Weights.IMAGENET1K_V1; used on torch-normalised input.
    "alexnet": TorchvisionFile(
        name="alexnet", display_name="AlexNet", file_name="alexnet-owt-7be5be79.pth",
        sha256_prefix="7be5be79", size_mb=233, keras_file="alexnet_torchvision_imagenet.h5",
        normalisation="torch",
    ),
    # torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1. These weights were ported from
    # TensorFlow, and torchvision builds the network with transform_input=True for them: its
    # forward pass first maps torch-normalised input back, channel by channel, with
    # x * (std / 0.5) + (mean - 0.5) / 0.5, i.e. to (x / 255 - 0.5) / 0.5. So what the weights
    # actually see is x / 127.5 - 1 per RGB channel: the "tf" convention. The Keras GoogLeNet
    # has no transform_input step, so it must be fed x / 127.5 - 1 directly.
    "googlenet": TorchvisionFile(
        name="googlenet", display_name="GoogLeNet", file_name="googlenet-1378be20.pth",
        sha256_prefix="1378be20", size_mb=50, keras_file="googlenet_torchvision_imagenet.h5",
        normalisation="tf",
    ),
}


def get_torchvision_file(name: str) -> TorchvisionFile:
    """The ``TORCHVISION_FILES`` entry for ``name`` (KeyError listing the known names)."""
    if name not in TORCHVISION_FILES:
        raise KeyError(f"no torchvision weights registered for {name!r}; known: "
                       f"{', '.join(sorted(TORCHVISION_FILES))}")
    return TORCHVISION_FILES[name]


# --------------------------------------------------------------------------------------------
# Reading a .pth without torch
# --------------------------------------------------------------------------------------------

# torch storage classes -> numpy dtype of one element (bfloat16 is read as its 16 bits).
_STORAGE_DTYPES: dict[str, str] = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "u2",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "ComplexFloatStorage": "c8",
    "ComplexDoubleStorage": "c16",
}


# Every object the pickle can reach is immutable (frozen, no __dict__), so that its BUILD
# opcode cannot alter a stand-in, let alone one that a later file would see.


@dataclass(frozen=True, slots=True)
class _StorageType:
    """Stands in for a ``torch.<X>Storage`` class named in the pickle."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True, slots=True, eq=False)
class _Storage:
    """One storage of the file; ``holder`` receives its data (1-D, native order) once read."""

    key: str
    type: _StorageType
    numel: int
    root: _Storage | None = None  # a legacy storage view: elements base.. of root
    base: int = 0
    holder: list = field(default_factory=list)

    @property
    def data(self) -> np.ndarray | None:
        source = self.root or self
        return source.holder[0] if source.holder else None


@dataclass(frozen=True, slots=True, eq=False)
class _LazyTensor:
    """A tensor rebuilt by the pickle, made an array once its storage's bytes are read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _Malformed(ValueError):
    """Raised inside unpickling; read_pth re-raises it as PthFormatError naming the file."""


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise _Malformed(f"tensor {what} must be a tuple of ints, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _LazyTensor:
    """Stands in for ``torch._utils._rebuild_tensor`` (files of torch < 0.4)."""
    if not isinstance(storage, _Storage):
        raise _Malformed(f"a tensor is rebuilt from {type(storage).__name__}, not a storage")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise _Malformed(f"tensor storage offset must be an int >= 0, got {storage_offset!r}")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides) or min(shape + strides, default=0) < 0:
        raise _Malformed(f"tensor size {shape} and stride {strides} do not match")
    return _LazyTensor(storage, storage_offset, shape, strides)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _LazyTensor:
    """Stands in for ``torch._utils._rebuild_tensor_v2``; gradients and hooks are dropped."""
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False,
                       backward_hooks: Any = None) -> _LazyTensor:
    """Stands in for ``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    if not isinstance(data, _LazyTensor):
        raise _Malformed(f"a parameter is rebuilt from {type(data).__name__}, not a tensor")
    return data


class _StandIn:
    """A torch function as the pickle sees it: calls one of ours, and cannot be altered."""

    __slots__ = ("_function",)

    def __init__(self, function: Any) -> None:
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _Malformed("the pickle tries to modify a rebuilding function")

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # an immutable built-in type
    ("torch._utils", "_rebuild_tensor"): _StandIn(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _StandIn(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _StandIn(_rebuild_parameter),
    **{("torch", name): _StorageType(name, np.dtype(code)) for name, code in
       _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``_ALLOWED_GLOBALS``; storages come through ``persistent`` (persistent ids)."""

    def __init__(self, handle: BinaryIO, path: Path, persistent: Any = None) -> None:
        super().__init__(handle, encoding="utf-8")
        self.path = path
        self.persistent = persistent

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise UnsafePickleError(
                f"{self.path}: refuses to load: the pickle references {module}.{name}, which is "
                f"not a tensor or a state dict (a downloaded .pth can run code; only tensors "
                f"are read)")
        return found

    def persistent_load(self, pid: Any) -> Any:
        if self.persistent is None:
            raise _Malformed(f"unexpected persistent id {pid!r}")
        return self.persistent(pid)


def _load_pickle(handle: BinaryIO, path: Path, persistent: Any = None) -> Any:
    return _RestrictedUnpickler(handle, path, persistent).load()


def _storage_from_pid(pid: Any, legacy: bool, storages: dict[str, _Storage]) -> _Storage:
    """The storage a persistent id names (created on first sight, shared afterwards)."""
    size = 6 if legacy else 5
    if not isinstance(pid, tuple) or len(pid) != size or pid[0] != "storage":
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            raise _Malformed("the file holds a whole pickled nn.Module (with its source code), "
                             "not a state dict")
        raise _Malformed(f"unexpected persistent id {pid!r}")
    storage_type, key, location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
        raise _Malformed(f"persistent id names {storage_type!r}, not a storage type")
    if not isinstance(key, str) or not isinstance(location, str) or not isinstance(numel, int) \
            or numel < 0:
        raise _Malformed(f"malformed storage record {pid!r}")
    root = storages.get(key)
    if root is None:
        root = storages[key] = _Storage(key, storage_type, numel)
    elif root.type != storage_type or root.numel != numel:
        raise _Malformed(f"storage {key} is declared twice with different types or sizes")
    view = pid[5] if legacy else None
    if view is None:
        return root
    if not (isinstance(view, tuple) and len(view) == 3
            and all(isinstance(v, int) for v in view[1:]) and view[1] >= 0 and view[2] >= 0
            and view[1] + view[2] <= numel):
        raise _Malformed(f"malformed storage view {view!r} of storage {key}")
    return _Storage(str(view[0]), storage_type, view[2], root=root, base=view[1])


def _native(raw: Any, dtype: np.dtype, byteorder: str) -> np.ndarray:
    """The 1-D array of ``raw`` bytes, in native byte order."""
    wire = dtype.newbyteorder("<" if byteorder == "little" else ">")
    data = np.frombuffer(raw, dtype=wire)
    return data.astype(dtype) if wire != dtype else data


def _read_exactly(handle: BinaryIO, count: int, path: Path, what: str) -> bytearray:
    buffer = bytearray(count)
    got = handle.readinto(buffer)
    if got != count:
        raise PthFormatError(f"{path}: truncated: {what} needs {count} bytes, the file has "
                             f"{got or 0} left")
    return buffer


def _read_legacy(path: Path, handle: BinaryIO) -> Any:
    """The main object of a legacy (torch < 1.6 or non-zip) file, storages filled in."""
    magic = _load_pickle(handle, path)
    if magic != LEGACY_MAGIC:
        raise PthFormatError(f"{path}: not a torch .pth file (neither a zip archive nor a "
                             f"pickle starting with torch's magic number)")
    version = _load_pickle(handle, path)
    if version != LEGACY_PROTOCOL_VERSION:
        raise PthFormatError(f"{path}: unsupported torch file protocol version {version!r}")
    sys_info = _load_pickle(handle, path)
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    byteorder = "little" if little else "big"
    storages: dict[str, _Storage] = {}
    main = _load_pickle(handle, path, lambda pid: _storage_from_pid(pid, True, storages))
    keys = _load_pickle(handle, path)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise PthFormatError(f"{path}: malformed list of storage keys")
    size = os.fstat(handle.fileno()).st_size if hasattr(handle, "fileno") else None
    for key in keys:
        storage = storages.get(key)
        if storage is None or storage.holder:
            raise PthFormatError(f"{path}: storage {key} is listed but no tensor uses it, or "
                                 f"listed twice")
        header = _read_exactly(handle, 8, path, f"the size of storage {key}")
        numel = int.from_bytes(header, byteorder)
        if numel != storage.numel:
            raise PthFormatError(f"{path}: storage {key} holds {numel} elements, its record "
                                 f"says {storage.numel}")
        nbytes = numel * storage.type.dtype.itemsize
        if size is not None and handle.tell() + nbytes > size:
            raise PthFormatError(f"{path}: truncated: storage {key} needs {nbytes} bytes, the "
                                 f"file has {size - handle.tell()} left")
        raw = _read_exactly(handle, nbytes, path, f"storage {key}")
        storage.holder.append(_native(raw, storage.type.dtype, byteorder))
    return main


def _read_zip(path: Path) -> Any:
    """The main object of a zip-format file (torch >= 1.6), storages filled in."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise PthFormatError(f"{path}: a zip file, but not a torch .pth (no single "
                                 f"<archive>/data.pkl in it)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise PthFormatError(f"{path}: unknown byte order {byteorder!r}")
        storages: dict[str, _Storage] = {}

        def persistent(pid: Any) -> _Storage:
            storage = _storage_from_pid(pid, False, storages)
            if storage.data is None:
                member = f"{prefix}data/{storage.key}"
                if member not in names:
                    raise _Malformed(f"the storage file {member} is missing")
                raw = archive.read(member)
                nbytes = storage.numel * storage.type.dtype.itemsize
                if len(raw) < nbytes:
                    raise _Malformed(f"{member} has {len(raw)} bytes, {nbytes} are needed")
                storage.holder.append(_native(memoryview(raw)[:nbytes], storage.type.dtype,
                                              byteorder))
            return storage

        with archive.open(pickles[0]) as handle:
            return _load_pickle(handle, path, persistent)


def _to_array(tensor: _LazyTensor) -> np.ndarray:
    """A contiguous copy of the elements the tensor's offset, size and stride select."""
    storage = tensor.storage
    data = storage.data
    if data is None:
        raise _Malformed(f"the bytes of storage {(storage.root or storage).key} are not in "
                         f"the file")
    if 0 in tensor.size:
        array = np.empty(tensor.size, dtype=data.dtype)
    else:
        start = storage.base + tensor.offset
        last = start + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
        if last >= min(storage.base + storage.numel, len(data)):  # never read past the data
            raise _Malformed(f"a tensor of size {tensor.size}, stride {tensor.stride} and "
                             f"offset {tensor.offset} reaches past its storage of "
                             f"{storage.numel} elements")
        view = np.lib.stride_tricks.as_strided(
            data[start:], shape=tensor.size,
            strides=tuple(s * data.dtype.itemsize for s in tensor.stride), writeable=False)
        array = np.array(view, copy=True, order="C")
    if storage.type.name == "BFloat16Storage":  # the upper half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def read_pth(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in a torch ``.pth`` file, as ``{key: numpy array}``, read without torch.

    Reads both formats ``torch.save`` writes: the zip archive (torch >= 1.6) and the legacy
    stream of pickles (older files, such as torchvision's published weights). Only tensors and
    ordered dicts are rebuilt; any other global in the pickle raises :class:`UnsafePickleError`
    without being called. A truncated file, another format or an object that is not a flat
    ``{str: tensor}`` mapping raises :class:`PthFormatError`; both name the file.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            main = _read_zip(path)
        else:
            with open(path, "rb") as handle:
                main = _read_legacy(path, handle)
    except (PthFormatError, OSError):
        raise
    except _Malformed as error:
        raise PthFormatError(f"{path}: not a readable .pth state dict: {error}") from error
    except Exception as error:  # noqa: BLE001 - pickle raises many kinds on garbage input
        raise PthFormatError(f"{path}: not a readable torch .pth file (truncated or another "
                             f"format: {type(error).__name__}: {error})") from error
    if not isinstance(main, dict):
        raise PthFormatError(f"{path}: holds a {type(main).__name__}, not a state dict "
                             f"(a mapping of names to tensors)")
    state: dict[str, np.ndarray] = {}
    for key, value in main.items():
        if not isinstance(key, str) or not isinstance(value, _LazyTensor):
            raise PthFormatError(f"{path}: entry {key!r} is a {type(value).__name__}, not a "
                                 f"tensor; only flat state dicts are read")
        try:
            state[key] = _to_array(value)
        except _Malformed as error:
            raise PthFormatError(f"{path}: tensor {key!r}: {error}") from error
    return state


# --------------------------------------------------------------------------------------------
# torchvision state dict -> Keras layers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LayerMap:
    """One Keras layer and the torchvision tensors it is made of."""

    layer: str  # Keras layer name
    kind: str  # "conv", "conv_nobias", "bn", "dense" or "dense_chw"
    module: str  # torchvision module path, e.g. "features.0" or "conv1.bn"
    shape: tuple[int, ...]  # torch shape of the weight (the channels for "bn")
    chw: tuple[int, int, int] = (0, 0, 0)  # "dense_chw": the (C, H, W) flattened before it


_TENSORS = {
    "conv": ("weight", "bias"), "conv_nobias": ("weight",), "dense": ("weight", "bias"),
    "dense_chw": ("weight", "bias"), "bn": ("weight", "bias", "running_mean", "running_var"),
}

IMAGENET_CLASSES = 1000

_ALEXNET: tuple[_LayerMap, ...] = (
    _LayerMap("conv1", "conv", "features.0", (64, 3, 11, 11)),
    _LayerMap("conv2", "conv", "features.3", (192, 64, 5, 5)),
    _LayerMap("conv3", "conv", "features.6", (384, 192, 3, 3)),
    _LayerMap("conv4", "conv", "features.8", (256, 384, 3, 3)),
    _LayerMap("conv5", "conv", "features.10", (256, 256, 3, 3)),
    # torch flattens the 256x6x6 map as (C, H, W), Keras' Flatten as (H, W, C).
    _LayerMap("fc6", "dense_chw", "classifier.1", (4096, 256 * 6 * 6), chw=(256, 6, 6)),
    _LayerMap("fc7", "dense", "classifier.4", (4096, 4096)),
    _LayerMap("predictions", "dense", "classifier.6", (IMAGENET_CLASSES, 4096)),
)

# GoogLeNet's inception modules (torchvision's numbers, Szegedy et al. 2014 Table 1), the one table
# helpers.models builds the network from: name, #1x1, #3x3 reduce, #3x3, "#5x5" reduce, "#5x5"
# (3x3 kernels in torchvision), pool proj. Kept here so that this module needs no Keras.
GOOGLENET_INCEPTIONS = (
    ("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64),
    ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64), ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128), ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
)


def _basic_conv(module: str, in_channels: int, out_channels: int,
                kernel: int) -> tuple[_LayerMap, _LayerMap]:
    """torchvision's BasicConv2d ``module`` (conv without bias + batch norm) as two Keras layers."""
    prefix = module.replace(".", "_")
    return (_LayerMap(f"{prefix}_conv", "conv_nobias", f"{module}.conv",
                      (out_channels, in_channels, kernel, kernel)),
            _LayerMap(f"{prefix}_bn", "bn", f"{module}.bn", (out_channels,)))


def _googlenet_layers() -> tuple[_LayerMap, ...]:
    found = [*_basic_conv("conv1", 3, 64, 7), *_basic_conv("conv2", 64, 64, 1),
             *_basic_conv("conv3", 64, 192, 3)]
    channels = 192
    for key, ch1, ch3red, ch3, ch5red, ch5, pool_proj in GOOGLENET_INCEPTIONS:
        module = f"inception{key}"
        found += [*_basic_conv(f"{module}.branch1", channels, ch1, 1),
                  *_basic_conv(f"{module}.branch2.0", channels, ch3red, 1),
                  *_basic_conv(f"{module}.branch2.1", ch3red, ch3, 3),
                  *_basic_conv(f"{module}.branch3.0", channels, ch5red, 1),
                  *_basic_conv(f"{module}.branch3.1", ch5red, ch5, 3),
                  *_basic_conv(f"{module}.branch4.1", channels, pool_proj, 1)]
        channels = ch1 + ch3 + ch5 + pool_proj
    found.append(_LayerMap("fc", "dense", "fc", (IMAGENET_CLASSES, channels)))
    return tuple(found)


_ARCHITECTURES: dict[str, tuple[_LayerMap, ...]] = {
    "alexnet": _ALEXNET,
    "googlenet": _googlenet_layers(),
}
# Keys of the published files that the Keras networks have no layer for.
_IGNORED_PREFIXES: dict[str, tuple[str, ...]] = {
    "alexnet": (),
    "googlenet": ("aux1.", "aux2."),  # the auxiliary classifiers (training only)
}


def keras_layer_names(name: str) -> list[str]:
    """The Keras layers (with weights) that ``convert(name, ...)`` fills, in network order."""
    return [entry.layer for entry in _architecture(name)]


def _architecture(name: str) -> tuple[_LayerMap, ...]:
    if name not in _ARCHITECTURES:
        raise KeyError(f"no torchvision conversion for {name!r}; known: "
                       f"{', '.join(sorted(_ARCHITECTURES))}")
    return _ARCHITECTURES[name]


def _keys(entry: _LayerMap) -> list[tuple[str, tuple[int, ...]]]:
    """The torchvision keys of one Keras layer and the shape each must have."""
    keys = [f"{entry.module}.{tensor}" for tensor in _TENSORS[entry.kind]]
    return [(key, entry.shape if index == 0 else entry.shape[:1])
            for index, key in enumerate(keys)]


def _check(name: str, display: str, layers: tuple[_LayerMap, ...],
           state_dict: dict[str, np.ndarray]) -> None:
    """Every key present with its shape, no key the network lacks (all before any copying)."""
    needed = {key: (shape, entry.layer) for entry in layers for key, shape in _keys(entry)}
    present = sum(key in state_dict for key in needed)
    if present < len(needed) / 2:
        raise WeightsConversionError(
            f"{display}: the state dict is not torchvision's {display}: it has {present} of the "
            f"{len(needed)} keys needed (its first keys: {', '.join(list(state_dict)[:3])})")
    for key, (shape, layer) in needed.items():
        if key not in state_dict:
            raise WeightsConversionError(f"{display}: the state dict has no {key!r} (needed for "
                                         f"the Keras layer {layer!r})")
        found = tuple(np.shape(state_dict[key]))
        if found != shape:
            raise WeightsConversionError(f"{display}: {key!r} has shape {found}, the Keras "
                                         f"layer {layer!r} needs {shape}")
    ignored = _IGNORED_PREFIXES.get(name, ())
    unknown = sorted(key for key in state_dict if key not in needed
                     and not key.endswith(".num_batches_tracked")
                     and not key.startswith(ignored))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise WeightsConversionError(f"{display}: the state dict has keys the Keras network has "
                                     f"no layer for: {', '.join(unknown[:5])}{more} (is it "
                                     f"another network's file?)")


def _keras_arrays(entry: _LayerMap, state_dict: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The Keras weights of one layer, in Keras' order and layout, float32 and C-contiguous."""
    arrays = [np.asarray(state_dict[key]).astype(np.float32, copy=False)
              for key, _ in _keys(entry)]
    out = entry.shape[0]
    if entry.kind in ("conv", "conv_nobias"):
        arrays[0] = arrays[0].transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif entry.kind == "dense":
        arrays[0] = arrays[0].T  # (out, in) -> (in, out)
    elif entry.kind == "dense_chw":  # inputs flattened (C, H, W) -> flattened (H, W, C)
        channels, height, width = entry.chw
        arrays[0] = arrays[0].reshape(out, channels, height, width).transpose(2, 3, 1, 0) \
            .reshape(height * width * channels, out)
    # "bn": torch weight, bias, running_mean, running_var = Keras gamma, beta, moving mean/var.
    return [np.ascontiguousarray(array) for array in arrays]


def convert(name: str, state_dict: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """torchvision's ``name`` state dict -> ``{Keras layer name: weights}`` of helpers.models.

    Convolutions OIHW -> HWIO, dense (out, in) -> (in, out), batch norm -> [gamma, beta,
    moving_mean, moving_variance] (``num_batches_tracked`` skipped); AlexNet's ``fc6`` rows are
    reordered from torch's (C, H, W) flattening to Keras' (H, W, C). GoogLeNet's auxiliary
    classifiers are ignored. Every Keras layer with weights is filled; a missing, mis-shaped or
    unknown key raises :class:`WeightsConversionError` naming it. All arrays are float32.
    """
    layers = _architecture(name)
    display = get_torchvision_file(name).display_name if name in TORCHVISION_FILES else name
    _check(name, display, layers, state_dict)
    return {entry.layer: _keras_arrays(entry, state_dict) for entry in layers}


# --------------------------------------------------------------------------------------------
# Writing the Keras 2 legacy-layout .h5
# --------------------------------------------------------------------------------------------

_WEIGHT_NAMES = {1: ("kernel",), 2: ("kernel", "bias"),
                 4: ("gamma", "beta", "moving_mean", "moving_variance")}


def write_keras_h5(arrays_by_layer: dict[str, list[np.ndarray]], path: str | Path, *,
                   attrs: dict[str, str] | None = None) -> Path:
    """Write ``{layer: weights}`` as a Keras 2 legacy-layout ``.h5``; return its path.

    Root attribute ``layer_names``; one group per layer with attribute ``weight_names``
    (``<layer>/kernel:0``, ``<layer>/bias:0``, or ``gamma``/``beta``/``moving_mean``/
    ``moving_variance`` for batch norm, as Keras 2 names them) and a dataset per weight. What
    ``helpers.models.load_h5_weights_by_name`` reads. Written to a temporary file beside
    ``path`` and renamed, so ``path`` never exists half written. ``attrs``: extra root
    attributes (e.g. where the weights came from).
    """
    from helpers.paths import atomic_path

    target = Path(path)
    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.attrs["layer_names"] = np.array([n.encode("utf8") for n in arrays_by_layer])
            handle.attrs["backend"] = b"tensorflow"
            for key, value in (attrs or {}).items():
                handle.attrs[key] = str(value)
            for layer, arrays in arrays_by_layer.items():
                group = handle.create_group(layer)
                names = _WEIGHT_NAMES.get(len(arrays)) or tuple(f"weight{i}"
                                                                for i in range(len(arrays)))
                weight_names = [f"{layer}/{n}:0" for n in names]
                group.attrs["weight_names"] = np.array([n.encode("utf8") for n in weight_names])
                for weight_name, array in zip(weight_names, arrays):
                    group.create_dataset(weight_name, data=np.asarray(array))
    return target


# --------------------------------------------------------------------------------------------
# Keras' cache: convert, download
# --------------------------------------------------------------------------------------------


def default_models_dir() -> Path:
    """Keras' weights cache, read now: ``$KERAS_HOME/models`` or ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".keras") / "models"


def _check_prefix(path: Path, entry: TorchvisionFile, digest: str) -> None:
    if not digest.startswith(entry.sha256_prefix):
        raise ChecksumMismatchError(
            f"{path}: SHA-256 mismatch: the name {entry.file_name} promises a digest starting "
            f"with {entry.sha256_prefix}, the file's is {digest}")


def _where(folder: Path) -> str:
    return (f"{folder} (Keras' cache: $KERAS_HOME/models, or ~/.keras/models when KERAS_HOME "
            f"is unset; KERAS_HOME={os.environ.get('KERAS_HOME')!r})")


def _unavailable(entry: TorchvisionFile, folder: Path, url: str, why: str) -> str:
    return (f"ImageNet weights for {entry.display_name} (torchvision) are not available: "
            f"neither {entry.keras_file} nor {entry.file_name} is in {_where(folder)}, and {why}. "
            f"Fix: run once with network access (download=True), or download {url} (about "
            f"{entry.size_mb} MB) yourself and put it into {folder}, or use weights=None.")


def _download(entry: TorchvisionFile, target: Path, url: str, *, progress: bool,
              timeout: float) -> None:
    """Fetch ``url`` to ``target`` and check its SHA-256 prefix (the file deleted if wrong)."""
    from helpers.downloads import fetch

    folder = target.parent
    if progress:
        print(f"downloading {url} (about {entry.size_mb} MB) -> {target}", file=sys.stderr)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        digest = fetch(url, target, progress=progress, timeout=timeout)
    except Exception as error:  # noqa: BLE001 - any failure means "not available"
        raise WeightsUnavailableError(_unavailable(
            entry, folder, url, f"downloading {url} failed ({type(error).__name__}: {error})"
        )) from error
    try:
        _check_prefix(target, entry, digest)
    except ChecksumMismatchError as error:
        target.unlink(missing_ok=True)
        raise ChecksumMismatchError(f"{error}; the downloaded file was deleted. Download {url} "
                                    f"again, or put a correct copy into {folder}") from None


def ensure_keras_weights(name: str, models_dir: str | Path | None = None, *,
                         download: bool = True, progress: bool = True, url: str | None = None,
                         source: TorchvisionFile | None = None,
                         timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The converted Keras ``.h5`` of torchvision's ImageNet weights for ``name``; its path.

    Looks in ``models_dir`` (default Keras' cache, ``$KERAS_HOME/models``): the converted file
    (``keras_file``) is returned as it is; else the published ``.pth`` found there is checked
    against its SHA-256 prefix and converted (and left where it is, since it was put there by
    hand); else, with ``download``, the ``.pth`` is downloaded from ``url`` (a base URL,
    default torchvision's) with ``helpers.downloads.fetch`` (resumable through a ``.part``
    file, ``timeout`` seconds per socket operation), checked, converted, and then *deleted*
    (the ``.h5`` holds the same weights; deleting saves up to 233 MB).

    Raises :class:`WeightsUnavailableError` (offline, any download failure, ``download=False``)
    saying which file to put where; :class:`ChecksumMismatchError` (a subclass) when the
    ``.pth``'s SHA-256 does not match (a downloaded one is deleted). ``source`` replaces the
    registry entry (tests, mirrors); ``name`` picks the architecture either way.
    """
    entry = source or get_torchvision_file(name)
    folder = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    converted = folder / entry.keras_file
    if converted.is_file():
        return converted
    pth = folder / entry.file_name
    full_url = (url.rstrip("/") + "/" + entry.file_name) if url else entry.url
    downloaded = False
    if pth.is_file():
        _check_prefix(pth, entry, sha256_file(pth))
    elif not download:
        raise WeightsUnavailableError(_unavailable(entry, folder, full_url,
                                                   "downloading is off (download=False)"))
    else:
        _download(entry, pth, full_url, progress=progress, timeout=timeout)
        downloaded = True
    arrays = convert(name, read_pth(pth))
    write_keras_h5(arrays, converted, attrs={
        "source": f"torchvision ImageNet weights {entry.file_name} ({entry.url})",
        "normalisation": entry.normalisation,
    })
    if progress:
        print(f"converted {pth.name} -> {converted}", file=sys.stderr)
    if downloaded:
        pth.unlink(missing_ok=True)
    return converted

