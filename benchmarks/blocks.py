"""Speed of conv3d vs PmSCn blocks and whole UNets: inference and training step, GFLOP/s.

Each conv spec is timed as the replacement of a group of two 3x3x3 convs ``C -> C -> C``
(conv3d: two Conv3d; psc(m,1): two PSC(m,1); psc(m,n>=2): one PSC(m,n)), on a 64^3 input
(same padding), for C in (24, 48, 96); then whole UNets (num_fmaps 12, x3 per level, two
2x2x2 levels, valid convs, the registry's defaults otherwise) on the input that gives a 64^3
output, with their throughput in output voxels/s. Beside each time: the achieved GFLOP/s
(2 x MACs of the convolutions / time; a training step counts 3x the forward) and its
percentage of the machine's fp32 matmul GFLOP/s, measured in the same run.

Three execution modes per row (``--modes``):

* ``ncdhw``: contiguous tensors and the plain PyTorch paths (psc-seg before the speed work);
* ``ndhwc``: channels_last_3d model and input, plain PyTorch paths;
* ``fast``: channels_last_3d plus :mod:`psc_seg.nn.fast` (oneDNN called directly at
  inference, one-channel inputs widened to two, channels-last concatenation): what psc-seg
  runs now. Its output is checked allclose against ``ncdhw``.

    python benchmarks/blocks.py [--device cpu|cuda] [--size 64] [--repeats 3]
        [--channels 24 48 96] [--specs conv3d "psc(2,2)"] [--modes ncdhw fast] [--no-train]
        [--no-blocks] [--no-unets] [--threads N] [--malloc psc-seg|system]
        [--precisions float32 bfloat16 bf16-all]

``--precisions float32 bfloat16 bf16-all`` (default all) times every row in each precision side
by side (bfloat16: as ``psc-seg predict --precision bfloat16`` runs the network on CPU,
:func:`psc_seg.engine.precision.to_bfloat16`: a UNet's full-resolution level in float32, the
rest in bfloat16; ``bf16-all``: every weight and the input in bfloat16; the fast paths take
bfloat16 where oneDNN computes it; a single block is the same in both), with the time ratio
bfloat16 / float32 after each pair; the CPU's model name and bfloat16 flags (``amx_bf16``,
``avx512_bf16``) are printed at the top. A bfloat16 row's max |diff| is against the float32
``ncdhw`` reference.

``--modes ... compile`` adds, for whole UNets, ``torch.compile`` (inductor; inference with
weight freezing) of the channels-last model on the plain paths, and prints its compile time.

``--malloc psc-seg`` (default) first calls :func:`psc_seg.allocator.keep_freed_memory`, as
the ``psc-seg`` command does; ``--malloc system`` keeps glibc's defaults (one ``mmap`` per tensor
above 32 MiB): run both to see what that costs, it applies to every mode of the run.

Rows are printed as they finish; times are medians of ``--repeats`` runs after a warm-up (whole
UNets: every spec and mode interleaved within each repeat, fairer on a shared machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from psc_seg.models import build_model
from psc_seg.nn import fast_paths, make_convs, to_channels_last
from psc_seg.nn.fast import onednn_bf16
from psc_seg.allocator import keep_freed_memory
from psc_seg.engine.precision import cpu_info, input_dtype, to_bfloat16

SPECS = ["conv3d", "psc(1,1)", "psc(2,2)", "psc(3,2)"]
MODES = ["ncdhw", "ndhwc", "fast"]
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "bf16-all": torch.bfloat16}
COMPILE = "compile"  # whole UNets only, on request: --modes fast compile
UNET = dict(num_fmaps=12, fmap_inc_factor=3, downsample_factors=[[2, 2, 2], [2, 2, 2]])


def conv_flops(model: nn.Module, x: torch.Tensor) -> int:
    """2 x multiply-adds of every Conv3d / ConvTranspose3d in one forward pass of ``x``
    (counted on the plain path, where every conv goes through its module's hooks)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        if isinstance(module, nn.ConvTranspose3d):
            voxels = inputs[0].shape[0] * inputs[0][0, 0].numel()
        else:
            voxels = output.shape[0] * output[0, 0].numel()
        total += 2 * voxels * module.in_channels * module.out_channels * kernel // module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    with torch.no_grad(), fast_paths(False):
        model(x)
    for h in handles:
        h.remove()
    return total


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, *, repeats: int, device: str) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(device: str, *, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = median_time(lambda: a @ b, repeats=repeats, device=device)
    return 2 * n**3 / seconds / 1e9


def time_model(model: nn.Module, x: torch.Tensor, *, mode: str, precision: str, repeats: int, device: str,
               train: bool, reference: torch.Tensor | None = None) -> dict:
    """Median inference (and training step) seconds of ``model`` on ``x`` in ``mode`` and ``precision``."""
    model, x = prepare(model, x, mode, device, precision)
    result: dict = {}
    with fast_paths(mode == "fast"):
        model.eval()

        def infer():
            with torch.inference_mode():
                return model(x)

        t_infer = median_time(infer, repeats=repeats, device=device)
        result["infer"] = t_infer
        if reference is not None:
            out = infer().float()
            result["max_abs_diff"] = float((out - reference).abs().max())
        if train:
            model.train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

            def train_step():
                optimizer.zero_grad(set_to_none=True)
                model(x).float().square().mean().backward()
                optimizer.step()

            result["train"] = median_time(train_step, repeats=repeats, device=device)
    return result


def reference_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(), fast_paths(False):
        return model.eval()(x.contiguous()).float()


def print_row(name: str, mode: str, precision: str, flops: int, r: dict, peak: float, *, before: dict | None) -> None:
    line = f"{name:<22}{mode:<7}{precision:<9}{flops / 1e9:>7.2f}{r['infer'] * 1e3:>10.1f}"
    g = flops / r["infer"] / 1e9
    line += f"{g:>8.1f}{100 * g / peak:>5.0f}%"
    if "train" in r:
        gt = 3 * flops / r["train"] / 1e9
        line += f"{r['train'] * 1e3:>10.1f}{gt:>8.1f}{100 * gt / peak:>5.0f}%"
    else:
        line += f"{'-':>10}{'-':>8}{'-':>6}"
    if before is not None and before is not r:
        line += f"  x{before['infer'] / r['infer']:.2f} inf"
        if "train" in r and "train" in before:
            line += f" x{before['train'] / r['train']:.2f} train"
    if "max_abs_diff" in r:
        line += f"  maxdiff {r['max_abs_diff']:.1e}"
    print(line, flush=True)


def print_precision_ratios(name: str, results: dict, precisions: list[str], modes: list[str]) -> None:
    """One line: per mode, bfloat16's time over float32's (below 1: bfloat16 faster)."""
    if "float32" not in precisions or "bfloat16" not in precisions:
        return
    parts = []
    for mode in modes:
        f32, bf16 = results[(mode, "float32")], results[(mode, "bfloat16")]
        part = f"{mode} {bf16['infer'] / f32['infer']:.2f}"
        if "train" in f32 and "train" in bf16:
            part += f" (train {bf16['train'] / f32['train']:.2f})"
        parts.append(part)
    print(f"{name:<22}time bfloat16/float32: {', '.join(parts)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels", type=int, nargs="+", default=[24, 48, 96])
    parser.add_argument("--specs", nargs="+", default=SPECS)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=[*MODES, COMPILE])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--malloc", choices=["psc-seg", "system"], default="psc-seg",
                        help="psc-seg: keep_freed_memory() as the psc-seg command; system: glibc defaults")
    parser.add_argument("--no-blocks", action="store_true", help="skip the per-block rows")
    parser.add_argument("--no-unets", action="store_true", help="skip the whole-UNet rows")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                        help="time every row in each (bfloat16: as predict on CPU; bf16-all: every weight)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.malloc == "psc-seg" else False
    torch.manual_seed(0)
    device = args.device
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"malloc {'keeps freed memory' if kept else 'system defaults'}", flush=True)
    if device == "cpu":
        name, flags = cpu_info()
        print(f"CPU {name}, bfloat16 flags: {', '.join(flags) or 'none'}; oneDNN bfloat16: "
              f"{onednn_bf16()}", flush=True)
    peak = matmul_gflops(device)
    print(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s\n", flush=True)
    print(f"{'what':<22}{'mode':<7}{'prec':<9}{'GFLOP':>7}{'infer ms':>10}{'GFLOP/s':>8}{'%mm':>6}"
          f"{'train ms':>10}{'GFLOP/s':>8}{'%mm':>6}  (speed-up vs {args.modes[0]}; max |diff| vs ncdhw plain)",
          flush=True)
    train = not args.no_train
    if not args.no_blocks:
        for channels in args.channels:
            x = torch.randn(1, channels, args.size, args.size, args.size)
            for spec in args.specs:
                block = nn.Sequential(*make_convs(spec, channels, channels, num_convs=2, padding="same"))
                flops = conv_flops(block, x)
                ref = reference_output(block, x) if device == "cpu" else None
                modes = [m for m in args.modes if m != COMPILE]
                results = {}
                for precision in args.precisions:
                    first = None
                    for mode in modes:
                        r = time_model(block, x, mode=mode, precision=precision, repeats=args.repeats, device=device,
                                       train=train, reference=ref if (mode, precision) != ("ncdhw", "float32") else None)
                        first = first or r
                        results[(mode, precision)] = r
                        print_row(f"C={channels} {spec}", mode, precision, flops, r, peak, before=first)
                print_precision_ratios(f"C={channels} {spec}", results, args.precisions, modes)
    if not args.no_unets:
        unet_rows(args, peak, train=train)


def prepare(model: nn.Module, x: torch.Tensor, mode: str, device: str,
            precision: str = "float32") -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``model`` and ``x`` on ``device``, in ``precision``, laid out for ``mode``."""
    model = copy.deepcopy(model).to(device=device)
    if precision == "bfloat16":  # as predict runs it: a UNet's full-resolution level stays float32
        model = to_bfloat16(model)
    else:
        model = model.to(PRECISIONS[precision])
    x = x.to(device=device, dtype=input_dtype(model))
    if mode == "ncdhw":
        return model.to(memory_format=torch.contiguous_format), x.contiguous()
    return to_channels_last(model), to_channels_last(x)


def compiled(model: nn.Module, *, train: bool) -> nn.Module:
    """``torch.compile`` (inductor) of a channels-last copy of ``model``, on the plain paths
    (:mod:`psc_seg.nn.fast` off: inductor makes its own oneDNN calls and fusions); inference
    with ``freezing`` (weights folded and prepacked for oneDNN)."""
    return torch.compile(copy.deepcopy(model), options={} if train else {"freezing": True})


def unet_rows(args, peak: float, *, train: bool) -> None:
    """Whole UNets, every (spec, mode) timed interleaved (one after the other within each
    repeat) so that load changes on a shared machine hit all of them alike."""
    device = args.device
    models, inputs, flops, refs, out_voxels = {}, {}, {}, {}, {}
    for spec in args.specs:
        torch.manual_seed(0)
        model = build_model("unet", conv=spec, **UNET)
        shape = model.valid_input_shape(model.valid_output_shape((args.size,) * 3))
        out_voxels[spec] = int(torch.tensor(model.output_shape(shape)).prod())
        models[spec], inputs[spec] = model, torch.randn(1, 1, *shape)
        flops[spec] = conv_flops(model, inputs[spec])
        refs[spec] = reference_output(model, inputs[spec]) if device == "cpu" else None
    results: dict = {}
    keys = [(spec, mode, precision) for spec in args.specs for precision in args.precisions for mode in args.modes]
    prepared = {key: prepare(models[key[0]], inputs[key[0]], key[1], device, key[2]) for key in keys}
    runners = {key: compiled(prepared[key][0].eval(), train=False) if key[1] == COMPILE else prepared[key][0]
               for key in keys}

    def infer(key):
        with torch.inference_mode(), fast_paths(key[1] == "fast"):
            return runners[key].eval()(prepared[key][1])

    report_compile_time(infer, keys, "inference")
    times = interleaved(infer, keys, repeats=args.repeats, device=device)
    for key in keys:
        results[key] = {"infer": times[key]}
        if refs[key[0]] is not None and key[1:] != ("ncdhw", "float32"):
            results[key]["max_abs_diff"] = float((infer(key).float() - refs[key[0]]).abs().max())
    if train:
        runners = {key: compiled(prepared[key][0].train(), train=True) if key[1] == COMPILE else prepared[key][0]
                   for key in keys}
        optimizers = {key: torch.optim.SGD(runners[key].parameters(), lr=0.0) for key in keys}

        def train_step(key):
            model = runners[key].train()
            with fast_paths(key[1] == "fast"):
                optimizers[key].zero_grad(set_to_none=True)
                model(prepared[key][1]).float().square().mean().backward()
                optimizers[key].step()

        report_compile_time(train_step, keys, "training step")
        times = interleaved(train_step, keys, repeats=args.repeats, device=device)
        for key in keys:
            results[key]["train"] = times[key]
    for spec in args.specs:
        for precision in args.precisions:
            for mode in args.modes:
                print_row(f"UNet12x3 {spec}", mode, precision, flops[spec], results[(spec, mode, precision)], peak,
                          before=results[(spec, args.modes[0], precision)])
        print_precision_ratios(f"UNet12x3 {spec}", {key[1:]: r for key, r in results.items() if key[0] == spec},
                               args.precisions, args.modes)
    print("\nUNet predict throughput (output voxels/s of the forward pass) relative to conv3d, same mode and "
          "precision:")
    for precision in args.precisions:
        for mode in args.modes:
            base = results.get(("conv3d", mode, precision))
            for spec in args.specs:
                v = out_voxels[spec] / results[(spec, mode, precision)]["infer"]
                ratio = f"  x{base['infer'] / results[(spec, mode, precision)]['infer']:.2f} of conv3d" if base else ""
                print(f"  {spec:<10}{mode:<7}{precision:<9}{v / 1e6:8.3f} Mvox/s{ratio}", flush=True)


def report_compile_time(fn, keys: list, what: str) -> None:
    """Run (and so compile) the ``compile`` keys once, printing the seconds that took."""
    for key in keys:
        if key[1] == COMPILE:
            start = time.perf_counter()
            fn(key)
            print(f"torch.compile {key[0]} {what}: first call {time.perf_counter() - start:.1f} s", flush=True)


def interleaved(fn, names: list, *, repeats: int, device: str) -> dict:
    """Median seconds of ``fn(name)`` per name, timed name after name within each repeat."""
    for name in names:
        fn(name)
    times: dict = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            sync(device)
            start = time.perf_counter()
            fn(name)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}

if __name__ == "__main__":
    main()
