"""Tests of helpers.torchvision_weights: reading .pth files without torch, the refusal of unsafe
pickles, the conversion of torchvision's AlexNet and GoogLeNet state dicts to the Keras networks
of helpers.models (checked against a numpy forward pass written from torchvision's definitions),
and ensure_keras_weights offline and against a loopback HTTP server.

No torch and no network: the .pth files are written here the way torch.save writes them.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import socket
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from helpers import models
from test_downloads import Server
from helpers import torchvision_weights as tw
from helpers.torchvision_weights import (
    ChecksumMismatchError,
    PthFormatError,
    TorchvisionFile,
    UnsafePickleError,
    WeightsConversionError,
    WeightsUnavailableError,
)

# --------------------------------------------------------------------------------------------
# A .pth writer, as torch.save writes one (pickle protocol 2)
# --------------------------------------------------------------------------------------------


def _stand_in(module: str, name: str):
    """A function that pickles as the global ``module.name`` (never called)."""

    def function(*args):
        raise AssertionError(f"the stand-in for {module}.{name} must not be called")

    function.__module__, function.__qualname__, function.__name__ = module, name, name
    return function


REBUILD_TENSOR_V2 = _stand_in("torch._utils", "_rebuild_tensor_v2")
STORAGE_CLASSES = {np.dtype(code): type(name, (), {"__module__": "torch"}) for code, name in (
    ("f4", "FloatStorage"), ("f8", "DoubleStorage"), ("f2", "HalfStorage"),
    ("i8", "LongStorage"), ("i4", "IntStorage"), ("u1", "ByteStorage"), ("?", "BoolStorage"))}
TORCH_GLOBALS = {id(REBUILD_TENSOR_V2): ("torch._utils", "_rebuild_tensor_v2"),
                 **{id(cls): ("torch", cls.__name__) for cls in STORAGE_CLASSES.values()}}


@dataclass(eq=False)
class FakeStorage:
    key: str
    data: np.ndarray  # 1-D, contiguous


@dataclass
class View:
    """A tensor sharing the storage of the tensor ``of`` (elements, as torch counts them)."""

    of: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class FakeTensor:
    def __init__(self, storage: FakeStorage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        return (REBUILD_TENSOR_V2, (self.storage, self.offset, tuple(self.size),
                                    tuple(self.stride), False, collections.OrderedDict()))


class TorchPickler(pickle._Pickler):
    """Writes stand-ins as torch's globals and storages as persistent ids, as torch.save does."""

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = lambda self, obj: self.save_global(obj)

    def __init__(self, file, legacy: bool) -> None:
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if not isinstance(obj, FakeStorage):
            return None
        record = ("storage", STORAGE_CLASSES[obj.data.dtype], obj.key, "cpu", obj.data.size)
        return record + (None,) if self.legacy else record

    def save_global(self, obj, name=None):
        if id(obj) not in TORCH_GLOBALS:
            return super().save_global(obj, name)
        module, qualname = TORCH_GLOBALS[id(obj)]
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


def _fake_state(tensors: dict[str, np.ndarray | View]) -> tuple[collections.OrderedDict,
                                                                   list[FakeStorage]]:
    state: collections.OrderedDict = collections.OrderedDict()
    state._metadata = collections.OrderedDict([("", {"version": 1})])  # as state_dict() sets
    storages: list[FakeStorage] = []
    for name, value in tensors.items():
        if isinstance(value, View):
            base = state[value.of].storage
            state[name] = FakeTensor(base, value.offset, value.size, value.stride)
            continue
        array = np.array(value, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
        storage = FakeStorage(str(len(storages)), array.reshape(-1))
        storages.append(storage)
        strides = tuple(s // max(array.itemsize, 1) for s in array.strides)
        state[name] = FakeTensor(storage, 0, array.shape, strides)
    return state, storages


def write_pth(path: Path, tensors: dict[str, np.ndarray | View], fmt: str = "legacy") -> Path:
    """Write ``tensors`` (arrays, or views of earlier ones) as torch.save would."""
    state, storages = _fake_state(tensors)
    main = io.BytesIO()
    TorchPickler(main, legacy=fmt == "legacy").dump(state)
    if fmt == "legacy":
        with open(path, "wb") as out:
            for header in (tw.LEGACY_MAGIC, tw.LEGACY_PROTOCOL_VERSION,
                           {"protocol_version": 1001, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(header, out, protocol=2)
            out.write(main.getvalue())
            keys = sorted(s.key for s in storages)
            pickle.dump(keys, out, protocol=2)
            by_key = {s.key: s for s in storages}
            for key in keys:
                data = by_key[key].data
                out.write(int(data.size).to_bytes(8, "little"))
                out.write(data.astype(data.dtype.newbyteorder("<")).tobytes())
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr("archive/data.pkl", main.getvalue())
            archive.writestr("archive/byteorder", "little")
            for storage in storages:
                archive.writestr(f"archive/data/{storage.key}", storage.data.tobytes())
            archive.writestr("archive/version", "3\n")
    return path


# --------------------------------------------------------------------------------------------
# read_pth
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_read_pth_round_trips_arrays_views_and_dtypes(tmp_path, fmt):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 4)).astype(np.float32)
    tensors = {
        "weight": base,
        "weight_t": View("weight", 0, (4, 3), (1, 4)),  # a transposed view of the same storage
        "weight_tail": View("weight", 5, (2, 2), (4, 1)),  # offset and a row stride
        "half": rng.standard_normal((2, 3, 2)).astype(np.float16),
        "double": rng.standard_normal(5),
        "num_batches_tracked": np.array(7, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }
    path = write_pth(tmp_path / f"x.{fmt}.pth", tensors, fmt)
    assert zipfile.is_zipfile(path) == (fmt == "zip")
    state = tw.read_pth(path)
    assert list(state) == list(tensors)
    expected = {**tensors, "weight_t": base.T, "weight_tail": base.reshape(-1)[[[5, 6], [9, 10]]]}
    for name, value in expected.items():
        assert state[name].dtype == np.asarray(value).dtype, name
        np.testing.assert_array_equal(state[name], value, err_msg=name)
        assert state[name].flags.c_contiguous and state[name].flags.writeable
    assert state["num_batches_tracked"].shape == ()


def _malicious_pickle(marker: Path) -> bytes:
    """A pickle calling os.system(f"touch {marker}") when loaded, written opcode by opcode."""
    command = f"touch {marker}".encode()
    return (b"\x80\x02" + pickle.GLOBAL + b"os\nsystem\n" + pickle.BINUNICODE
            + len(command).to_bytes(4, "little") + command + pickle.TUPLE1 + pickle.REDUCE
            + pickle.STOP)


class _Eval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("container", ["raw", "legacy", "zip"])
def test_a_pickle_that_calls_os_system_is_refused_and_nothing_runs(tmp_path, container):
    marker = tmp_path / "ran"
    payload = _malicious_pickle(marker)
    path = tmp_path / "evil.pth"
    if container == "raw":
        path.write_bytes(payload)
    elif container == "legacy":
        with open(path, "wb") as out:
            for header in (tw.LEGACY_MAGIC, tw.LEGACY_PROTOCOL_VERSION, {"little_endian": True}):
                pickle.dump(header, out, protocol=2)
            out.write(payload)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    with pytest.raises(UnsafePickleError) as caught:
        tw.read_pth(path)
    message = str(caught.value)
    assert str(path) in message and "os.system" in message and "refuses to load" in message
    assert isinstance(caught.value, ValueError)
    assert not marker.exists(), "the command of the pickle ran"


def test_builtins_eval_is_refused_too(tmp_path):
    path = tmp_path / "eval.pth"
    path.write_bytes(pickle.dumps(_Eval(), protocol=2, fix_imports=False))
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        tw.read_pth(path)


def test_a_pickle_cannot_alter_the_stand_ins(tmp_path):
    name = b"_function"
    payload = (b"\x80\x02" + pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.NONE
               + pickle.EMPTY_DICT + pickle.BINUNICODE + len(name).to_bytes(4, "little") + name
               + pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.SETITEM + pickle.TUPLE2
               + pickle.BUILD + pickle.STOP)  # setattr(stand_in, "_function", OrderedDict)
    for fmt, data in (("raw", payload), ("dict", payload.replace(
            pickle.NONE + pickle.EMPTY_DICT, pickle.EMPTY_DICT, 1).replace(
            pickle.TUPLE2 + pickle.BUILD, pickle.BUILD))):  # the __dict__ form of BUILD
        path = tmp_path / f"{fmt}.pth"
        path.write_bytes(data)
        with pytest.raises(PthFormatError, match=str(path)):
            tw.read_pth(path)
    good = write_pth(tmp_path / "good.pth", {"w": np.arange(3, dtype=np.float32)})
    np.testing.assert_array_equal(tw.read_pth(good)["w"], [0, 1, 2])


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    whole = write_pth(tmp_path / "whole.pth", {"w": np.ones((64, 64), np.float32)}).read_bytes()
    for name, data in (("truncated.pth", whole[:-100]), ("header.pth", whole[:30]),
                       ("text.pth", b"not a torch file\n"), ("empty.pth", b""),
                       ("number.pth", pickle.dumps(12345, protocol=2))):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(PthFormatError) as caught:
            tw.read_pth(path)
        assert str(path) in str(caught.value), name
    other_zip = tmp_path / "other.pth"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(PthFormatError, match="data.pkl"):
        tw.read_pth(other_zip)
    not_a_dict = tmp_path / "list.pth"
    with open(not_a_dict, "wb") as out:
        for header in (tw.LEGACY_MAGIC, tw.LEGACY_PROTOCOL_VERSION, {}, [1, 2], []):
            pickle.dump(header, out, protocol=2)
    with pytest.raises(PthFormatError, match="not a state dict"):
        tw.read_pth(not_a_dict)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    path = write_pth(tmp_path / "bad.pth", {"w": np.ones(4, np.float32),
                                            "v": View("w", 2, (4,), (1,))})
    with pytest.raises(PthFormatError, match="reaches past its storage"):
        tw.read_pth(path)


# --------------------------------------------------------------------------------------------
# torchvision-layout random weights and a numpy NCHW reference from torchvision's definitions
# --------------------------------------------------------------------------------------------

# torchvision.models.GoogLeNet: name, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj.
INCEPTIONS = (
    ("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64),
    ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64), ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128), ("5a", 256, 160, 320, 32, 128, 128),
    ("5b", 384, 192, 384, 48, 128, 128),
)


def _uniform(rng, shape, bound: float) -> np.ndarray:
    """Uniform in [-bound, bound), float32 (uniform: several times faster than normal here)."""
    weights = rng.random(shape, dtype=np.float32)
    weights -= np.float32(0.5)
    weights *= np.float32(2 * bound)
    return weights


def _he(rng, shape) -> np.ndarray:
    """He-style weights (std sqrt(2 / fan_in)): activations stay of order 1 layer after layer."""
    return _uniform(rng, shape, float(np.sqrt(6.0 / np.prod(shape[1:]))))


def _small(rng, shape, scale=0.05) -> np.ndarray:
    return _uniform(rng, shape, scale * np.sqrt(3.0))


def alexnet_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for index, shape in ((0, (64, 3, 11, 11)), (3, (192, 64, 5, 5)), (6, (384, 192, 3, 3)),
                         (8, (256, 384, 3, 3)), (10, (256, 256, 3, 3))):
        state[f"features.{index}.weight"] = _he(rng, shape)
        state[f"features.{index}.bias"] = _small(rng, shape[:1])
    for index, shape in ((1, (4096, 9216)), (4, (4096, 4096)), (6, (1000, 4096))):
        state[f"classifier.{index}.weight"] = _he(rng, shape)
        state[f"classifier.{index}.bias"] = _small(rng, shape[:1])
    return state


def _basic_state(rng, state: dict, module: str, cin: int, cout: int, kernel: int) -> None:
    state[f"{module}.conv.weight"] = _he(rng, (cout, cin, kernel, kernel))
    state[f"{module}.bn.weight"] = rng.uniform(0.8, 1.2, cout).astype(np.float32)
    state[f"{module}.bn.bias"] = _small(rng, (cout,), 0.1)
    state[f"{module}.bn.running_mean"] = _small(rng, (cout,), 0.1)
    state[f"{module}.bn.running_var"] = rng.uniform(0.8, 1.2, cout).astype(np.float32)
    state[f"{module}.bn.num_batches_tracked"] = np.array(1000, dtype=np.int64)


def googlenet_state(seed: int = 0, aux: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    _basic_state(rng, state, "conv1", 3, 64, 7)
    _basic_state(rng, state, "conv2", 64, 64, 1)
    _basic_state(rng, state, "conv3", 64, 192, 3)
    cin = 192
    for key, ch1, ch3red, ch3, ch5red, ch5, proj in INCEPTIONS:
        module = f"inception{key}"
        _basic_state(rng, state, f"{module}.branch1", cin, ch1, 1)
        _basic_state(rng, state, f"{module}.branch2.0", cin, ch3red, 1)
        _basic_state(rng, state, f"{module}.branch2.1", ch3red, ch3, 3)
        _basic_state(rng, state, f"{module}.branch3.0", cin, ch5red, 1)
        _basic_state(rng, state, f"{module}.branch3.1", ch5red, ch5, 3)
        _basic_state(rng, state, f"{module}.branch4.1", cin, proj, 1)
        cin = ch1 + ch3 + ch5 + proj
        if aux and key in ("4a", "4d"):  # the auxiliary classifiers, which Keras ignores
            name = "aux1" if key == "4a" else "aux2"
            aux_in = 512 if key == "4a" else 528
            _basic_state(rng, state, f"{name}.conv", aux_in, 128, 1)
            state[f"{name}.fc1.weight"] = _small(rng, (1024, 2048), 0.01)
            state[f"{name}.fc1.bias"] = _small(rng, (1024,))
            state[f"{name}.fc2.weight"] = _small(rng, (1000, 1024), 0.01)
            state[f"{name}.fc2.bias"] = _small(rng, (1000,))
    state["fc.weight"] = _he(rng, (1000, 1024))
    state["fc.bias"] = _small(rng, (1000,))
    return state


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: int = 1,
           padding: int = 0) -> np.ndarray:
    """torch.nn.functional.conv2d on NCHW float64 (im2col through a window view + tensordot)."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = weight.shape[2:]
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    out = np.tensordot(windows, weight.astype(np.float64), axes=([1, 4, 5], [1, 2, 3]))
    out = out.transpose(0, 3, 1, 2)
    return out + bias.astype(np.float64)[None, :, None, None] if bias is not None else out


def max_pool(x: np.ndarray, kernel: int, stride: int, padding: int = 0,
             ceil_mode: bool = False) -> np.ndarray:
    """torch.nn.MaxPool2d on NCHW (padding counts as -inf; torch's ceil_mode output size)."""

    def out_size(size: int) -> int:
        span = size + 2 * padding - kernel
        count = (-(-span // stride) if ceil_mode else span // stride) + 1
        if ceil_mode and (count - 1) * stride >= size + padding:
            count -= 1  # the last window must start inside the input or the left padding
        return count

    height, width = out_size(x.shape[2]), out_size(x.shape[3])
    extra_h = max(0, (height - 1) * stride + kernel - x.shape[2] - padding)
    extra_w = max(0, (width - 1) * stride + kernel - x.shape[3] - padding)
    x = np.pad(x, ((0, 0), (0, 0), (padding, extra_h), (padding, extra_w)),
               constant_values=-np.inf)
    windows = sliding_window_view(x, (kernel, kernel), axis=(2, 3))[:, :, ::stride, ::stride]
    return windows[:, :, :height, :width].max(axis=(4, 5))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def alexnet_reference(state: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's AlexNet.forward in numpy: (features after pool5, logits)."""
    s = state
    x = max_pool(relu(conv2d(x, s["features.0.weight"], s["features.0.bias"], 4, 2)), 3, 2)
    x = max_pool(relu(conv2d(x, s["features.3.weight"], s["features.3.bias"], 1, 2)), 3, 2)
    x = relu(conv2d(x, s["features.6.weight"], s["features.6.bias"], 1, 1))
    x = relu(conv2d(x, s["features.8.weight"], s["features.8.bias"], 1, 1))
    features = max_pool(relu(conv2d(x, s["features.10.weight"], s["features.10.bias"], 1, 1)), 3, 2)
    assert features.shape[2:] == (6, 6)  # AdaptiveAvgPool2d((6, 6)) is the identity here
    h = features.reshape(len(features), -1)  # torch.flatten(x, 1): (C, H, W) order
    for index in (1, 4):  # Dropout is the identity in eval mode
        h = relu(h @ s[f"classifier.{index}.weight"].astype(np.float64).T
                 + s[f"classifier.{index}.bias"])
    return features, h @ s["classifier.6.weight"].astype(np.float64).T + s["classifier.6.bias"]


def basic_conv(state: dict, module: str, x: np.ndarray, stride: int = 1,
               padding: int = 0) -> np.ndarray:
    """torchvision's BasicConv2d: conv (no bias) -> BatchNorm2d(eps=0.001) eval -> ReLU."""
    x = conv2d(x, state[f"{module}.conv.weight"], None, stride, padding)
    mean, var = state[f"{module}.bn.running_mean"], state[f"{module}.bn.running_var"]
    scale = state[f"{module}.bn.weight"] / np.sqrt(var.astype(np.float64) + 0.001)
    x = (x - mean[None, :, None, None]) * scale[None, :, None, None]
    return relu(x + state[f"{module}.bn.bias"][None, :, None, None])


def inception(state: dict, module: str, x: np.ndarray) -> np.ndarray:
    branch1 = basic_conv(state, f"{module}.branch1", x)
    branch2 = basic_conv(state, f"{module}.branch2.1",
                         basic_conv(state, f"{module}.branch2.0", x), padding=1)
    branch3 = basic_conv(state, f"{module}.branch3.1",
                         basic_conv(state, f"{module}.branch3.0", x), padding=1)
    pooled = max_pool(x, 3, 1, padding=1, ceil_mode=True)
    branch4 = basic_conv(state, f"{module}.branch4.1", pooled)
    return np.concatenate([branch1, branch2, branch3, branch4], axis=1)


def googlenet_reference(state: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's GoogLeNet.forward (eval, transform_input=True) on torch-normalised input."""
    mean, std = np.array(tw.IMAGENET_MEAN), np.array(tw.IMAGENET_STD)
    x = x * (std / 0.5)[None, :, None, None] + ((mean - 0.5) / 0.5)[None, :, None, None]
    x = basic_conv(state, "conv1", x, stride=2, padding=3)
    x = max_pool(x, 3, 2, ceil_mode=True)
    x = basic_conv(state, "conv3", basic_conv(state, "conv2", x), padding=1)
    x = max_pool(x, 3, 2, ceil_mode=True)
    for key, *_ in INCEPTIONS:
        x = inception(state, f"inception{key}", x)
        if key == "3b":
            x = max_pool(x, 3, 2, ceil_mode=True)
        elif key == "4e":
            x = max_pool(x, 2, 2, ceil_mode=True)
    pooled = x.mean(axis=(2, 3))  # AdaptiveAvgPool2d((1, 1)); dropout is the identity
    return x, pooled @ state["fc.weight"].astype(np.float64).T + state["fc.bias"]


def _images(n: int, size: int, seed: int = 1) -> np.ndarray:
    """RGB images in [0, 255], NHWC float64."""
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3))


def torch_normalise(images: np.ndarray) -> np.ndarray:
    return (images / 255.0 - np.array(tw.IMAGENET_MEAN)) / np.array(tw.IMAGENET_STD)


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _run(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(model(x.astype(np.float32), training=False))


def _assert_logits_match(probabilities: np.ndarray, logits: np.ndarray) -> None:
    """Softmax output vs reference logits: probabilities, and log-probabilities up to a constant
    (which are the pre-softmax logits up to a constant) within 1e-4."""
    assert 0.3 < np.abs(logits).max() < 50, "reference logits should be of order 1"
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    # float32 against float64: a probability of 0.8 carries ~1e-6 of rounding on some CPUs' kernels
    np.testing.assert_allclose(probabilities, expected, atol=1e-6, rtol=1e-5)
    log_p = np.log(probabilities.astype(np.float64))
    np.testing.assert_allclose(log_p - log_p.mean(axis=1, keepdims=True),
                               logits - logits.mean(axis=1, keepdims=True), atol=1e-4)


def _assert_features_match(keras_nhwc: np.ndarray, reference_nchw: np.ndarray) -> None:
    assert 0.3 < np.abs(reference_nchw).max() < 100, "reference features should be of order 1"
    np.testing.assert_allclose(keras_nhwc, reference_nchw.transpose(0, 2, 3, 1), atol=1e-4)


# --------------------------------------------------------------------------------------------
# Conversion fidelity
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alexnet_weights() -> dict[str, np.ndarray]:
    return alexnet_state(seed=3)


@pytest.fixture(scope="module")
def alexnet_converted(alexnet_weights) -> dict[str, list[np.ndarray]]:
    return tw.convert("alexnet", alexnet_weights)


def test_alexnet_conversion_matches_torchvision_forward(tmp_path, alexnet_weights,
                                                        alexnet_converted):
    state = alexnet_weights  # converted in memory: the .pth reading is tested with GoogLeNet's
    assert list(alexnet_converted) == tw.keras_layer_names("alexnet")
    h5 = tw.write_keras_h5(alexnet_converted, tmp_path / "alexnet.h5")

    x = torch_normalise(_images(2, 224))
    features, logits = alexnet_reference(state, nchw(x))

    top = models.AlexNet(include_top=True, input_shape=(224, 224, 3))
    with_weights = {layer.name for layer in top.layers if layer.weights}
    assert with_weights == set(tw.keras_layer_names("alexnet"))
    assert models.load_h5_weights_by_name(top, h5) == len(with_weights)
    _assert_logits_match(_run(top, x), logits)
    del top

    notop = models.AlexNet(include_top=False, input_shape=(224, 224, 3))
    assert models.load_h5_weights_by_name(notop, h5) == 5  # conv1..conv5; fc layers ignored
    _assert_features_match(_run(notop, x), features)


GOOGLENET_SIZE = 64  # every pooling sees an even size, so Keras' "same" equals torch's ceil_mode


@pytest.fixture(scope="module")
def googlenet_weights() -> dict[str, np.ndarray]:
    return googlenet_state(seed=5)


@pytest.fixture(scope="module")
def googlenet_top() -> keras.Model:
    return models.GoogLeNet(include_top=True, input_shape=(GOOGLENET_SIZE, GOOGLENET_SIZE, 3))


def test_googlenet_conversion_matches_torchvision_forward(tmp_path, googlenet_weights,
                                                          googlenet_top):
    state = googlenet_weights
    read = tw.read_pth(write_pth(tmp_path / "googlenet-random.pth", state, "zip"))
    assert list(read) == list(state) and all(np.array_equal(read[k], state[k]) for k in state)
    converted = tw.convert("googlenet", read)
    assert not any(name.startswith("aux") for name in converted)
    h5 = tw.write_keras_h5(converted, tmp_path / "googlenet.h5")

    size = GOOGLENET_SIZE
    images = _images(2, size, seed=2)
    features, logits = googlenet_reference(state, nchw(torch_normalise(images)))
    keras_input = images / 127.5 - 1  # the "tf" convention: what transform_input produces

    top = googlenet_top
    with_weights = {layer.name for layer in top.layers if layer.weights}
    assert with_weights == set(tw.keras_layer_names("googlenet"))
    assert models.load_h5_weights_by_name(top, h5) == len(with_weights)
    _assert_logits_match(_run(top, keras_input), logits)

    notop = models.GoogLeNet(include_top=False, input_shape=(size, size, 3))
    assert models.load_h5_weights_by_name(notop, h5) == len(with_weights) - 1  # all but fc
    _assert_features_match(_run(notop, keras_input), features)


def test_registry_normalisation_matches_transform_input():
    assert tw.TORCHVISION_FILES["alexnet"].normalisation == "torch"
    assert tw.TORCHVISION_FILES["googlenet"].normalisation == "tf"
    images = _images(1, 4)
    torch_input = nchw(torch_normalise(images))
    mean, std = np.array(tw.IMAGENET_MEAN), np.array(tw.IMAGENET_STD)
    transformed = (torch_input * (std / 0.5)[None, :, None, None]
                   + ((mean - 0.5) / 0.5)[None, :, None, None])
    np.testing.assert_allclose(transformed, nchw(images / 127.5 - 1), atol=1e-12)
    for name, entry in tw.TORCHVISION_FILES.items():
        assert entry.name == name and name in models.BACKBONES
        assert entry.url == tw.TORCHVISION_URL + entry.file_name
        assert entry.file_name.endswith(f"-{entry.sha256_prefix}.pth")
    with pytest.raises(ValueError, match="prefix"):
        TorchvisionFile("alexnet", "AlexNet", "alexnet.pth", "7be5be79", 1, "a.h5", "torch")


def test_conversion_errors_name_the_key(alexnet_weights, googlenet_weights):
    state = alexnet_weights
    missing = {k: v for k, v in state.items() if k != "features.3.bias"}
    with pytest.raises(WeightsConversionError, match=r"'features\.3\.bias'.*'conv2'"):
        tw.convert("alexnet", missing)
    wrong = dict(state, **{"classifier.6.weight": np.zeros((10, 4096), np.float32)})
    with pytest.raises(WeightsConversionError, match=r"'classifier\.6\.weight' has shape \(10, "):
        tw.convert("alexnet", wrong)
    with pytest.raises(WeightsConversionError, match="features.12.weight"):
        tw.convert("alexnet", dict(state, **{"features.12.weight": np.zeros(1, np.float32)}))
    with pytest.raises(WeightsConversionError, match="not torchvision.s AlexNet.*conv1.conv"):
        tw.convert("alexnet", googlenet_weights)
    bn = {k: v for k, v in googlenet_weights.items() if k != "inception4c.branch3.1.bn.running_var"}
    with pytest.raises(WeightsConversionError, match=r"'inception4c\.branch3\.1\.bn\.running_var'"
                                                     r".*'inception4c_branch3_1_bn'"):
        tw.convert("googlenet", bn)
    with pytest.raises(KeyError, match="known"):
        tw.convert("vgg16", state)


def test_alexnet_fc6_rows_follow_keras_flatten_order(alexnet_weights, alexnet_converted):
    state = alexnet_weights
    kernel = alexnet_converted["fc6"][0]
    weight = state["classifier.1.weight"]
    c, h, w, out = 17, 4, 2, 123
    assert kernel[h * 6 * 256 + w * 256 + c, out] == weight[out, c * 36 + h * 6 + w]


# --------------------------------------------------------------------------------------------
# ensure_keras_weights
# --------------------------------------------------------------------------------------------


@pytest.fixture
def server():
    srv = Server()  # tests/test_downloads.py's loopback server
    yield srv
    srv.stop()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_without_files_names_the_file_and_the_folder(tmp_path):
    folder = tmp_path / "models"
    with pytest.raises(WeightsUnavailableError) as caught:
        tw.ensure_keras_weights("alexnet", folder, download=False)
    message = str(caught.value)
    for part in ("alexnet-owt-7be5be79.pth", "alexnet_torchvision_imagenet.h5", str(folder),
                 "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "weights=None"):
        assert part in message
    url = f"http://127.0.0.1:{_closed_port()}/models/"
    with pytest.raises(WeightsUnavailableError) as caught:
        tw.ensure_keras_weights("googlenet", folder, url=url, progress=False, timeout=5)
    message = str(caught.value)
    assert "googlenet-1378be20.pth" in message and str(folder) in message
    assert url + "googlenet-1378be20.pth" in message and "failed" in message
    assert not any(folder.glob("*.h5"))


def _entry_for(data: bytes, base: str, prefix: str | None = None) -> TorchvisionFile:
    prefix = prefix or hashlib.sha256(data).hexdigest()[:8]
    return TorchvisionFile(name="googlenet", display_name="GoogLeNet",
                           file_name=f"googlenet-{prefix}.pth", sha256_prefix=prefix, size_mb=1,
                           keras_file="googlenet_test.h5", normalisation="tf", url_base=base)


def test_download_convert_then_the_cache_is_used_without_the_server(tmp_path, server,
                                                                     googlenet_weights,
                                                                     googlenet_top):
    data = write_pth(tmp_path / "served.pth", googlenet_weights, "legacy").read_bytes()
    entry = _entry_for(data, server.url("/models/"))
    server.files[f"/models/{entry.file_name}"] = data
    folder = tmp_path / "keras" / "models"
    path = tw.ensure_keras_weights("googlenet", folder, source=entry, progress=False)
    assert path == folder / "googlenet_test.h5" and path.is_file()
    assert [entry["path"] for entry in server.log] == [f"/models/{entry.file_name}"]
    assert sorted(p.name for p in folder.iterdir()) == ["googlenet_test.h5"]  # .pth deleted
    model = googlenet_top
    assert models.load_h5_weights_by_name(model, path) == len(tw.keras_layer_names("googlenet"))
    np.testing.assert_array_equal(model.get_layer("inception4b_branch2_1_conv").get_weights()[0],
                                  googlenet_weights["inception4b.branch2.1.conv.weight"]
                                  .transpose(2, 3, 1, 0))
    with h5py.File(path, "r") as handle:
        assert "googlenet" in str(handle.attrs["source"])
    server.stop()
    assert tw.ensure_keras_weights("googlenet", folder, source=entry, progress=False) == path
    assert tw.ensure_keras_weights("googlenet", folder, source=entry, download=False) == path


def test_a_pth_put_there_by_hand_is_converted_and_kept(tmp_path, googlenet_weights):
    folder = tmp_path / "models"
    folder.mkdir()
    data = write_pth(tmp_path / "g.pth", googlenet_weights, "zip").read_bytes()
    entry = _entry_for(data, "http://127.0.0.1:9/")
    (folder / entry.file_name).write_bytes(data)
    path = tw.ensure_keras_weights("googlenet", folder, source=entry, download=False,
                                   progress=False)
    assert path.is_file() and (folder / entry.file_name).is_file()
    bad = _entry_for(data, "http://127.0.0.1:9/", prefix="0" * 8)
    (folder / bad.file_name).write_bytes(data)
    (folder / bad.keras_file).unlink()
    with pytest.raises(ChecksumMismatchError, match="00000000"):
        tw.ensure_keras_weights("googlenet", folder, source=bad, download=False)


def test_a_wrong_sha256_prefix_is_an_error_and_leaves_no_file(tmp_path, server):
    data = write_pth(tmp_path / "small.pth", {"w": np.ones(3, np.float32)}).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    wrong = ("1" if digest[0] == "0" else "0") + digest[1:8]
    entry = _entry_for(data, server.url("/m/"), prefix=wrong)
    server.files[f"/m/{entry.file_name}"] = data
    folder = tmp_path / "models"
    with pytest.raises(ChecksumMismatchError) as caught:
        tw.ensure_keras_weights("googlenet", folder, source=entry, progress=False)
    message = str(caught.value)
    assert wrong in message and digest in message and entry.file_name in message
    assert isinstance(caught.value, WeightsUnavailableError)
    assert list(folder.iterdir()) == []


def test_module_imports_neither_keras_nor_torch():
    source = Path(tw.__file__).read_text()
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")) and not line.startswith(" "):
            assert not any(name in stripped for name in ("keras", "tensorflow", "torch")), line
    assert "import torch" not in source
    assert os.path.basename(tw.__file__) == "torchvision_weights.py"
