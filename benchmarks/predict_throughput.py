"""Throughput of ``psc-seg predict`` against the bare network and MONAI's sliding window.

On a ``--size``^3 uint8 volume (default 256^3) and the psc(2,2) UNet of ``blocks.py``
(num_fmaps 12, x3 per level, two 2x2x2 levels), each row runs in a fresh subprocess and
reports voxels/s (output voxels / wall seconds of the work, model loading and imports
excluded) and the peak resident memory (max RSS; for ``--workers N``, the RSS of the whole
process tree summed every 50 ms, as ``predict_memory.py`` does):

* ``bare forward``: the network predict runs, alone on every block's input, already
  normalised in memory (same block shape and read shape as predict): the ceiling for predict.
  For the same-padding UNet that network is its valid twin (same weights, only the kept centre
  computed, :meth:`psc_seg.models.UNet.valid_twin`); ``bare forward, no twin`` runs the
  same-padding network itself on block + 2 halo windows (what psc-seg did before the twin).
* ``predict w0`` / ``predict wN``: :func:`psc_seg.pipelines.predict.predict` in process and
  with N dask workers (zarr in, zarr out, mirrored edges, resume record). Engine overhead =
  1 - bare seconds / predict seconds; also given against a bare forward whose first block
  is a cold first call (oneDNN primitive creation, first touch of memory), as predict's
  first block is (the bare row times its warm-up call separately and prints it).
* ``monai``: ``monai.inferers.sliding_window_inference`` with the same checkpoint's network:
  read the whole volume into memory, normalise, slide, write the result to zarr. The volume
  is mirrored by the halo ``h`` on each side as psc-seg mirrors edge blocks (cropped after),
  and the windows are psc-seg's: stride ``B`` (the block), ``overlap = 2h / window``.

  - same padding (MONAI's usual network): window ``B + 2h`` with ``h`` the context rounded up
    to the shape step, constant blending. MONAI computes the whole window and averages the
    overlaps; psc-seg computes only the centre it keeps.
  - valid padding (MONAI cannot crop by itself): the window is the network's input for a
    ``B`` output, the output is zero-padded back to the window and given weight 1 in the
    centre and 0 on the border (``roi_weight_map``): MONAI then blends exactly the outputs
    psc-seg writes, from the same network evaluations.

  The last line of each group gives the speed ratio, the peak memory and the largest
  difference between the two outputs.

* precisions (``--precisions``, default ``float32 bfloat16 auto``): the bare forward and
  predict rows run in each of float32 and bfloat16 (predict's ``precision=``: on CPU the
  network's weights and inputs in bfloat16), then a ``predict w0 auto`` row prints what
  ``--precision auto`` picked and why (its seconds include the calibration). The CPU's
  model name and bfloat16 flags are printed at the top, and after each group the bfloat16
  rows' speed ratio to float32 and the largest difference of their outputs. MONAI and the
  no-twin rows run in float32 only. ``--rounds N`` runs a group's rows N times in turn and
  reports each row's median seconds (peak memory: the largest). Every row runs with psc-seg's allocator setting
  (:func:`psc_seg.allocator.keep_freed_memory`), MONAI's included, so that it is not what
  differs.

    python benchmarks/predict_throughput.py [--size 256] [--block 64] [--workers 2] [--rounds 1]
        [--spec conv3d "psc(2,2)"] [--precisions float32 bfloat16 auto] [--paddings valid same]
        [--threads N]

Without monai installed the MONAI rows are skipped with a message (monai is not a dependency of
psc-seg: ``pip install --no-deps monai`` into the environment to run it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_memory import run_predict, write_input  # noqa: E402  (same directory)

UNET = dict(num_fmaps=12, fmap_inc_factor=3, downsample_factors=[[2, 2, 2], [2, 2, 2]])


def make_checkpoint(path: Path, *, spec: str, padding: str) -> str:
    from psc_seg.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("unet", conv=spec, padding=padding, **UNET)
    save_checkpoint(path, model, metadata={"task": {"kind": "affinities",
                                                     "offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]},
                                            "normalize": {"kind": "uint8"}})
    return str(path)


# ------------------------------------------------------------------ children (one row each)
def _halo_windows(model, block: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(window, halo) of a same-padding network: the block plus its context rounded up to the
    shape step on each side (what psc-seg reads for a same-padding network without a twin)."""
    from psc_seg.models.shapes import round_up

    halo = tuple(round_up(model.context, model.shape_step))
    return tuple(block + 2 * h for h in halo), halo


def child_bare(checkpoint: str, raw: str, block: int, network: str, precision: str = "float32") -> dict:
    """``network="predict"``: the network predict runs (a same-padding UNet's valid twin), on
    predict's read ROIs; ``"full"``: the checkpoint's network itself on block + halo windows.
    ``precision``: float32, or bfloat16 as predict runs it on CPU (weights and inputs cast)."""
    from psc_seg.engine import Roi, block_grid, read_mirrored
    from psc_seg.io import normalize, open_volume
    from psc_seg.models import load_checkpoint
    from psc_seg.allocator import keep_freed_memory
    from psc_seg.engine.inference import plan_geometry, prepare_model
    from psc_seg.engine.precision import cpu_bfloat16
    from psc_seg.nn import to_channels_last

    keep_freed_memory()  # as the psc-seg command does, for every row
    model = load_checkpoint(checkpoint).model
    source = open_volume(raw)
    if network == "full":
        window, halo = _halo_windows(model, block)
        runner, context = to_channels_last(model.eval()), halo
    else:
        geometry = plan_geometry(model, (block,) * 3)
        runner, window, context = prepare_model(model, bfloat16=cpu_bfloat16(precision, "cpu")), geometry.read_shape, geometry.context
    dtype = next(runner.parameters()).dtype
    blocks = block_grid(Roi((0, 0, 0), source.spatial_shape), write_shape=(block,) * 3, context=context,
                        read_shape=window)
    inputs = [torch.from_numpy(normalize(read_mirrored(source, b.read_roi), {"kind": "uint8"}))[None, None].to(dtype)
              for b in blocks]
    with torch.inference_mode():
        start = time.perf_counter()
        runner(to_channels_last(inputs[0]))  # warm-up (oneDNN primitive creation)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for x in inputs:
            runner(to_channels_last(x)).float()  # ends in the UNet's sigmoid
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "voxels": int(np.prod(source.spatial_shape)), "roi": list(window),
            "first_call_s": first, "blocks": len(inputs)}


def child_predict(checkpoint: str, raw: str, block: int, workers: int, out: str, precision: str) -> dict:
    from psc_seg.allocator import keep_freed_memory
    from psc_seg.io import open_volume
    from psc_seg.pipelines.predict import predict

    keep_freed_memory()  # as `psc-seg predict` does (the CLI applies it)
    start = time.perf_counter()
    summary = predict(checkpoint, raw, out, block_shape=(block,) * 3, workers=workers, progress=False,
                      precision=precision, overwrite=True)
    return {"seconds": time.perf_counter() - start, "voxels": int(np.prod(open_volume(raw).spatial_shape)),
            "precision": str(summary["precision"])}


def child_monai(checkpoint: str, raw: str, block: int, out: str) -> dict:
    """MONAI's sliding window with the checkpoint's network. Same padding: windows of block +
    2 halo, stride block, constant blending. Valid padding: windows of the network's input for
    a block, its output zero-padded back to the window and weighted 1 there and 0 on the
    border (``roi_weight_map``), so MONAI blends exactly the valid outputs psc-seg writes."""
    from monai.inferers import sliding_window_inference

    from psc_seg.io import create_volume, normalize, open_volume
    from psc_seg.models import load_checkpoint
    from psc_seg.allocator import keep_freed_memory
    from psc_seg.nn import to_channels_last

    keep_freed_memory()  # the allocator setting psc-seg's rows run with, so that it is not what differs
    model = to_channels_last(load_checkpoint(checkpoint).model.eval())
    weight_map = None
    if model.padding == "same":
        roi, halo = _halo_windows(model, block)
        predictor = model
    else:
        halo = tuple(model.context)
        roi = tuple(model.valid_input_shape((block,) * 3))
        weight_map = torch.zeros(1, 1, *roi)
        weight_map[(..., *(slice(h, r - h) for h, r in zip(halo, roi)))] = 1.0
        pad = [p for h in reversed(halo) for p in (h, h)]

        def predictor(x):
            return torch.nn.functional.pad(model(x), pad)

    overlap = [2 * h / r for h, r in zip(halo, roi)]
    with torch.inference_mode():
        model(torch.zeros(1, 1, *roi))  # warm-up, as for the other rows
    start = time.perf_counter()
    source = open_volume(raw)
    x = torch.from_numpy(normalize(source.read(), {"kind": "uint8"}))[None, None]
    h = halo
    with torch.inference_mode():
        # mirrored by the halo, as psc-seg reads edge blocks, so both run the same windows
        x = torch.nn.functional.pad(x, (h[2], h[2], h[1], h[1], h[0], h[0]), mode="reflect")
        y = sliding_window_inference(x, roi_size=roi, sw_batch_size=1, predictor=predictor, overlap=overlap,
                                     mode="constant", roi_weight_map=weight_map)
        y = y[0, :, h[0]:y.shape[2] - h[0], h[1]:y.shape[3] - h[1], h[2]:y.shape[4] - h[2]].numpy()
    target = create_volume(out, shape=y.shape, dtype="float32", chunks=(y.shape[0], block, block, block))
    target.write(None, y)
    target.finalize()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "voxels": int(np.prod(source.spatial_shape)), "roi": list(roi),
            "overlap": [round(o, 4) for o in overlap]}


def max_difference(a: str, b: str) -> float:
    from psc_seg.io import open_volume

    return float(np.abs(open_volume(a).read() - open_volume(b).read()).max())


def run_child(args: list[str], *, tree: bool) -> dict:
    """Run this script with ``args`` (``--child ...``) in a subprocess; its JSON result plus peak RSS (MiB)."""
    result_file = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, __file__, *args, "--result", str(result_file)]
    peak_mib, _ = run_predict(cmd, tree=tree)
    result = json.loads(result_file.read_text())
    result_file.unlink()
    result["peak_mib"] = peak_mib
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spec", nargs="+", default=["psc(2,2)"], help="conv specs of the UNets, one group each")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "auto"],
                        choices=["float32", "bfloat16", "auto"],
                        help="bare and predict rows in each of float32 / bfloat16; auto: one predict w0 row")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run a group's rows this many times in turn; each row's median seconds (a load that "
                             "comes and goes hits all rows alike)")
    parser.add_argument("--paddings", nargs="+", default=["valid", "same"], choices=["valid", "same"])
    parser.add_argument("--threads", type=int, default=None, help="OMP threads of in-process rows")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, checkpoint, raw, *rest = args.child
        if kind == "bare":
            result = child_bare(checkpoint, raw, args.block, *rest)
        elif kind == "predict":
            result = child_predict(checkpoint, raw, args.block, int(rest[0]), rest[1], rest[2])
        else:
            result = child_monai(checkpoint, raw, args.block, rest[0])
        Path(args.result).write_text(json.dumps(result))
        return
    if args.size % args.block:
        parser.error("--size must be a multiple of --block: otherwise MONAI shifts its last window off the "
                     "blocks' lattice and the two outputs are no longer comparable")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    try:
        import monai  # noqa: F401

        have_monai = True
    except ImportError:
        have_monai = False
        print("monai is not importable: MONAI rows skipped (pip install --no-deps monai)", flush=True)
    print(f"torch {torch.__version__}, nproc {os.cpu_count()}, volume {args.size}^3 uint8, block {args.block}^3, "
          f"UNets {', '.join(args.spec)} {UNET}", flush=True)
    from psc_seg.engine.precision import cpu_info
    from psc_seg.nn.fast import onednn_bf16

    name, flags = cpu_info()
    print(f"CPU {name}, bfloat16 flags: {', '.join(flags) or 'none'}; oneDNN bfloat16: "
          f"{onednn_bf16()}", flush=True)
    precisions = [p for p in args.precisions if p != "auto"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = write_input(tmp / "raw.zarr", args.size)
        rows = []
        for spec in args.spec:
            for padding in args.paddings:
                group = f"{padding:<6}" if len(args.spec) == 1 else f"{spec:<9}{padding:<6}"
                rows += run_group(args, tmp, raw, spec, padding, precisions, group, have_monai=have_monai)
        for r in rows:
            if r["name"].startswith("predict") and r["precision_asked"] != "auto":
                bare = next(b for b in rows if b["group"] == r["group"] and b["name"] == "bare forward"
                            and b["precision_asked"] == r["precision_asked"])
                cold = bare["seconds"] + bare["first_call_s"] - bare["seconds"] / bare["blocks"]
                print(f"{r['group']}{r['label']:<32} engine overhead vs bare forward: "
                      f"{100 * (1 - bare['seconds'] / r['seconds']):5.1f} % "
                      f"({100 * (1 - cold / r['seconds']):5.1f} % vs a bare forward whose first block "
                      f"is a cold first call, as predict's is)", flush=True)


def run_group(args, tmp: Path, raw: str, spec: str, padding: str, precisions: list[str], group: str, *,
              have_monai: bool) -> list[dict]:
    """The rows of one UNet (``spec``, ``padding``), printed as they finish."""
    base = tmp / f"{''.join(c for c in spec if c.isalnum())}_{padding}"
    ckpt = make_checkpoint(Path(f"{base}.pt"), spec=spec, padding=padding)
    out = {p: f"{base}_w0_{p}.zarr" for p in (*precisions, "auto")}
    runs = []
    for precision in precisions:
        runs.append(("bare forward", precision, ["--child", "bare", ckpt, raw, "predict", precision], False))
        if padding == "same" and precision == "float32":
            runs.append(("bare forward, no twin", precision, ["--child", "bare", ckpt, raw, "full"], False))
        runs += [("predict w0", precision, ["--child", "predict", ckpt, raw, "0", out[precision], precision], False),
                 (f"predict w{args.workers}", precision,
                  ["--child", "predict", ckpt, raw, str(args.workers), f"{base}_wN_{precision}.zarr", precision],
                  True)]
    if "auto" in args.precisions:
        runs.append(("predict w0", "auto", ["--child", "predict", ckpt, raw, "0", out["auto"], "auto"], False))
    if have_monai and "float32" in precisions:
        runs.append(("monai sliding window", "float32",
                     ["--child", "monai", ckpt, raw, f"{base}_monai.zarr"], False))
    rounds = [[run_child(child + ["--block", str(args.block)], tree=tree) for _, _, child, tree in runs]
              for _ in range(args.rounds)]
    rows = []
    for i, (name, precision, child, tree) in enumerate(runs):
        r = min((each[i] for each in rounds), key=lambda row: row["seconds"])  # for its other fields
        r["seconds"] = statistics.median(each[i]["seconds"] for each in rounds)
        r["peak_mib"] = max(each[i]["peak_mib"] for each in rounds)
        label = name if precision == "float32" and len(precisions) == 1 else f"{name} {precision}"
        r.update(name=name, label=label, padding=padding, group=group, precision_asked=precision)
        r["vps"] = r["voxels"] / r["seconds"]
        rows.append(r)
        extra = f"  window {r['roi']}" if "roi" in r else ""
        extra += f" overlap {r['overlap']}" if "overlap" in r else ""
        if "first_call_s" in r:
            per_block = r["seconds"] / r["blocks"]
            extra += f"  (first call {r['first_call_s']:.2f} s, then {per_block:.3f} s per block)"
        if precision == "auto":
            extra += f"  [{r['precision']}]"
        print(f"{group}{label:<32}{r['seconds']:8.1f} s{r['vps'] / 1e6:8.3f} Mvox/s"
              f"{r['peak_mib']:9.0f} MiB peak{extra}", flush=True)
    w0 = {r["precision_asked"]: r for r in rows if r["name"] == "predict w0"}
    if have_monai and "float32" in precisions:
        monai_row = rows[-1]
        diff = max_difference(out["float32"], f"{base}_monai.zarr")
        print(f"        psc-seg predict w0 / MONAI: x{w0['float32']['vps'] / monai_row['vps']:.2f} voxels/s, "
              f"peak memory {w0['float32']['peak_mib']:.0f} vs {monai_row['peak_mib']:.0f} MiB, "
              f"max |psc-seg - MONAI| {diff:.2g}", flush=True)
    if "float32" in precisions and "bfloat16" in precisions:
        ratios = []
        for name in ("bare forward", "predict w0", f"predict w{args.workers}"):
            f32, bf16 = (next(r for r in rows if r["name"] == name and r["precision_asked"] == p)
                         for p in ("float32", "bfloat16"))
            ratios.append(f"{name} x{bf16['vps'] / f32['vps']:.2f}")
        diff = max_difference(out["float32"], out["bfloat16"])
        print(f"        bfloat16 / float32 voxels/s: {', '.join(ratios)}; "
              f"max |bfloat16 - float32| of predict's output {diff:.2g}", flush=True)
    return rows


if __name__ == "__main__":
    main()
