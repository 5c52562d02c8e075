"""Derived scalars over a public-style checkpoint series at Pythia-70m scale: the engine vs the TransformerLens loop.

The series: N random-initialised GPT-NeoX checkpoints with Pythia-70m's shapes (6 layers, 8 heads,
d 512, MLP 2048, vocab 50304, parallel residual, rotary on 25% of each head, untied unembedding),
made locally with `transformers` (different weights per step: torch.manual_seed(step)) and saved
with `save_pretrained(safe_serialization=True)` as WORKDIR/series/step{K}/ (kept and reused), then
imported with `trainer.interop.hf.importer.import_hf([WORKDIR/series], run)` (a folder of step folders stands
for them all; the run references the files in place, the importer's default).
Standard suite (`types=["standard"]`: induction / prev-token / duplicate-token scores, zero-ablated
loss of every head, clean loss) on the probe `repeated_tokens:batch=16,T=64`: 16 sequences of BOS +
64 random tokens repeated = 129 tokens, as bench_engine.py (tokens < 50304 here). In this one process:

1. the engine: `scalars.compute` over the imported run (archive loading, compile and writing included;
   "steady" is the per-checkpoint time after the first block, compile excluded), run over every
   checkpoint, then again after the peer on its first --again-checkpoints (default 1) checkpoints,
   compiled program reused (the machine's load drifts: the best of the two is compared).
2. the TransformerLens 4.x bridge over HF GPTNeoXForCausalLM, loaded from each step folder, one
   forward with `hook_pattern` hooks (scores, clean loss), one `run_with_hooks(return_type="loss")`
   per head with its `hook_z` zeroed, on the first --peer-checkpoints checkpoints (default 2: a
   forward at this size unembeds 2064 tokens x 50304 and there are 48 of them per checkpoint).
   Skipped, with a message, without torch / transformers / transformer-lens.
3. a 2048^3 float32 matmul, repeated during the run: its best rate is the machine's peak here.
4. disk: a fresh 1 GiB file read sequentially after posix_fadvise(DONTNEED) (its page-cache
   residency checked with mincore, so the figure says whether it was cold), against one
   checkpoint's `store.open_archive(run).load(step)` read the same way (cold) and again (cached).
5. with --rss: peak RSS (VmHWM; see `rss_child` for why not ru_maxrss) of `scalars.compute` at 16 and at 64 checkpoints (--rss-counts),
   each in a fresh subprocess; those series hardlink the first 16 real checkpoints' files (steps
   16.. repeat steps 0..15's weights: the work and memory per checkpoint do not depend on the
   values), but each import still writes a full archive (64 x 282 MB) unless it references the
   files in place; at Pythia-70m scale the 64-checkpoint compute alone takes about an hour here.

Values: the peer's scores and losses are checked against the engine's stored cells (max abs
difference printed). GFLOP/s: FLOPs counted analytically for the engine's algorithm on this
architecture (`suite_flops` below, 2 per multiply-add, the matmuls only), over the steady time.
Usage:
    python benchmarks/bench_public_series.py [--checkpoints 16] [--peer-checkpoints 2] [--workdir DIR]
        [--again-checkpoints 1] [--threads 2] [--skip-tl] [--rss [--rss-counts 16 64]] [--small]
--small: a 2-layer, 4-head, d 64 GPT-NeoX with the same vocab and probe, for quick checks.
torch's OpenMP threads wait PASSIVE (set before torch loads), as in bench_engine.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (if any) starts its OpenMP pool
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only, never the hub

import argparse  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import mmap  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import store  # noqa: E402
from _engine_peers import _scores_from_mean_pattern, tl_ablated_losses, torch_available  # noqa: E402
from bench_engine import matmul_peak  # noqa: E402

PROBE = "repeated_tokens:batch=16,T=64"
BATCH, REPEAT = 16, 64
SCORES = ("induction_score", "prev_token_score", "duplicate_token_score")
CHECKED = (*SCORES, "ablated_loss", "loss")  # the "standard" set
TOLERANCE = 1e-4
STEP_STRIDE = 1000  # step{0, 1000, 2000, ...}
PYTHIA_70M = dict(num_hidden_layers=6, num_attention_heads=8, hidden_size=512, intermediate_size=2048,
                  vocab_size=50304, use_parallel_residual=True, rotary_pct=0.25, rotary_emb_base=10000,
                  max_position_embeddings=2048, hidden_act="gelu", tie_word_embeddings=False)
SMALL = {**PYTHIA_70M, "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "intermediate_size": 256}
RSS_COUNTS = (16, 64)


# -- the series ---------------------------------------------------------------------------------
def make_series(folder: Path, shape: dict, n: int) -> list[Path]:
    """step{K}/ folders (config.json + model.safetensors) for K = 0, 1000, ...; existing ones reused."""
    import torch
    import transformers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        step = STEP_STRIDE * i
        d = folder / f"step{step}"
        if not ((d / "config.json").is_file() and (d / "model.safetensors").is_file()):
            torch.manual_seed(step)
            model = GPTNeoXForCausalLM(GPTNeoXConfig(**shape))
            tmp = folder / f".tmp_step{step}"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp), safe_serialization=True)
            tmp.rename(d)
            del model
        out.append(d)
    return out


def link_series(folder: Path, real: list[Path], n: int) -> Path:
    """A series of n step folders whose weight files are hardlinks to the `real` ones (cycled)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        d = folder / f"step{STEP_STRIDE * i}"
        if (d / "model.safetensors").is_file():
            continue
        d.mkdir(exist_ok=True)
        src = real[i % len(real)]
        for name in os.listdir(src):
            if not (d / name).exists():
                os.link(src / name, d / name)
    return folder


def import_series(series: Path, run: Path, n: int) -> tuple[Path, float | None]:
    """The run imported from `series` (reused when complete): (run dir, import seconds or None if reused)."""
    from trainer.interop.hf.importer import import_hf

    if (run / "run.json").is_file() and store.open_archive(run).n_committed == n:
        return run, None
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    import_hf([series], run)
    return run, time.perf_counter() - t0


def probe_tokens(run: Path) -> np.ndarray:
    """The (16, 129) tokens the engine builds for PROBE on this run."""
    from scalars.engine import build_run_probe
    from scalars.engine._plan import load_run_model_config

    info, config = load_run_model_config(run)
    return np.asarray(build_run_probe(PROBE, run, info, config).arrays["tokens"])


def suite_flops(config, batch: int = BATCH, seq: int = 2 * REPEAT + 1) -> dict[str, float]:
    """FLOPs of the standard suite for one checkpoint, counted analytically (2 per multiply-add,
    matmuls only: softmax, norms, gelu and rotary not counted; attention counts causal pairs).

    `engine`: what scalars/interventions/_fast_ablation.py does for a parallel-residual model: the clean forward
    (all S positions unembedded), then per head of layer l: its term z_h W_O^h taken off resid_post
    (layer l's MLP read resid_pre, which the ablation leaves unchanged, so it is not re-run), layers
    l+1.. in full and the unembedding of the S-1 positions the loss reads. `full_forwards`: what the
    TransformerLens loop does: 1 + L*H complete forwards."""
    L, H, d, m, V = config.n_layers, config.n_heads, config.d_model, config.mlp_width, config.vocab_size
    e, rows = config.d_head, batch * seq
    causal = seq * (seq + 1) / 2
    attn = 2 * rows * d * 3 * d + 2 * batch * H * causal * e * 2 + 2 * rows * d * d
    mlp = 2 * rows * d * m * 2
    unembed = 2 * rows * d * V
    clean = L * (attn + mlp) + unembed
    engine = clean
    for layer in range(L):
        engine += H * (2 * rows * e * d + (L - 1 - layer) * (attn + mlp) + unembed * (seq - 1) / seq)
    return {"clean": clean, "engine": engine, "full_forwards": (1 + L * H) * clean,
            "unembed_share": (unembed + L * H * unembed * (seq - 1) / seq) / engine}


def unembed_rates(config, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of one ablated run's unembedding at the suite's shape, (B*(S-1), d) x (d, V): the matmul
    alone, and followed by a plain mean cross-entropy over the materialised (B, S-1, V) logits (the
    engine's ablated re-runs instead take the vocabulary in 8192-column chunks,
    `trainer.model.chunked_token_metrics`): what the suite's dominant op can reach."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    B, S, d, V = BATCH, 2 * REPEAT, config.d_model, config.vocab_size
    x = jnp.asarray(rng.standard_normal((B, S, d), np.float32))
    w = jnp.asarray(0.02 * rng.standard_normal((d, V), np.float32))
    t = jnp.asarray(rng.integers(0, V, (B, S)))

    def ce(x, w, t):
        logits = x @ w
        correct = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return (jax.nn.logsumexp(logits, axis=-1) - correct).mean()

    out = {}
    for name, f in (("matmul", lambda x, w, t: (x @ w).sum()), ("matmul+CE", ce)):
        g = jax.jit(f)
        g(x, w, t).block_until_ready()
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            g(x, w, t).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        out[name] = 2 * B * S * d * V / best / 1e9
    return out


# -- the engine ---------------------------------------------------------------------------------
def time_engine(run: Path, steps: str | None = None) -> dict[str, float]:
    """scalars.compute(types=["standard"]) forced over `steps` (all by default): per checkpoint end to end
    (compile included on a first call), the time to the first block, and steady (after it)."""
    import scalars

    stamps: list[float] = []
    t0 = time.perf_counter()
    report = scalars.compute(run, ["standard"], probe=PROBE, steps=steps, force=True, on_progress=lambda done, total: stamps.append(time.perf_counter()))[0]
    total = time.perf_counter() - t0
    n = report.checkpoints_computed
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else total
    return {"per_ckpt": total / n, "steady": steady, "first": stamps[0] - t0, "n": n, "traces": report.traces,
            "total": total}


# -- the TransformerLens peer -------------------------------------------------------------------
class NeoXLensLoop:
    """The hook-based per-checkpoint loop on HF GPT-NeoX step folders (weights read each time)."""

    def __init__(self, tokens: np.ndarray, threads: int):
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.torch = torch
        self.tokens = torch.tensor(np.asarray(tokens), dtype=torch.long)

    def load(self, hf_dir: Path):
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import GPTNeoXForCausalLM

        hf = GPTNeoXForCausalLM.from_pretrained(str(hf_dir), attn_implementation="eager")
        return TransformerBridge.boot_transformers(str(hf_dir), hf_model=hf, device="cpu")

    def __call__(self, hf_dir: Path, ablations: bool = True) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        torch = self.torch
        t0 = time.perf_counter()
        bridge = self.load(hf_dir)
        t1 = time.perf_counter()
        L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
        means = [None] * L

        def keep_pattern(pattern, hook):
            means[hook.layer()] = pattern.mean(0).numpy()  # (H, S, S)

        out = {}
        with torch.inference_mode():
            loss = bridge.run_with_hooks(self.tokens, return_type="loss",
                                         fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", keep_pattern) for l in range(L)])
            out["loss"] = np.float32(loss.item())
            out.update(_scores_from_mean_pattern(np.stack(means), REPEAT))
            t2 = time.perf_counter()
            if ablations:
                out["ablated_loss"] = tl_ablated_losses(bridge, self.tokens, L, H)
        t3 = time.perf_counter()
        return out, {"load": t1 - t0, "clean": t2 - t1, "ablations": t3 - t2, "total": t3 - t0}


def max_diffs(got: dict, cell) -> dict[str, float]:
    return {k: float(np.abs(np.asarray(got[k]) - cell[k].values).max()) for k in CHECKED if k in got}


# -- disk and archive reading -------------------------------------------------------------------
_LIBC = ctypes.CDLL(None, use_errno=True)
PAGE = mmap.PAGESIZE


def resident_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the file in the page cache, file size), by mincore(2) over a read-only mapping;
    (-1, size) where the kernel refuses."""
    size = path.stat().st_size
    if size == 0:
        return 0, 0
    libc = _LIBC
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return -1, size
        try:
            vec = (ctypes.c_ubyte * ((size + PAGE - 1) // PAGE))()
            if libc.mincore(addr, size, vec) != 0:
                return -1, size
            return int(np.frombuffer(vec, np.uint8).__and__(1).sum()) * PAGE, size
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def drop_from_cache(paths) -> None:
    """Ask the kernel to drop the files' clean pages (fsync first so no page is dirty)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            try:
                os.fsync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_under(*roots: Path) -> list[Path]:
    out = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            out.extend(Path(dirpath) / n for n in names)
    return [p for p in out if p.is_file() and not p.is_symlink()]


def cache_fraction(paths) -> float:
    """Fraction of the files' bytes in the page cache (NaN where mincore is refused)."""
    res = [resident_bytes(p) for p in paths]
    if any(r < 0 for r, _ in res):
        return float("nan")
    total = sum(s for _, s in res)
    return min(1.0, sum(r for r, _ in res) / total) if total else 0.0


def io_read_bytes() -> int:
    """Bytes this process has had read from the storage layer (/proc/self/io read_bytes; -1 if unknown)."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def disk_read_rate(folder: Path, size: int = 1 << 30, chunk: int = 8 << 20, repeats: int = 2) -> dict[str, float]:
    """Sequential read of a freshly written file: after DONTNEED (cold if residency and read_bytes say
    so; best of `repeats`) and re-read from the page cache (best of `repeats`)."""
    path = folder / "disk_read_probe.bin"
    block = np.random.default_rng(0).integers(0, 256, chunk, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        for i in range(size // chunk):
            f.write(block[i % 7:] + block[:i % 7])  # not all-identical blocks
        f.flush()
        os.fsync(f.fileno())
    buf = bytearray(chunk)

    def read() -> float:
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        return time.perf_counter() - t0

    out = {"cold": 0.0, "cached": 0.0, "resident_before": 0.0, "device_bytes": 0}
    try:
        for _ in range(repeats):
            drop_from_cache([path])
            before, io0 = cache_fraction([path]), io_read_bytes()
            rate = size / read() / 1e9
            if rate > out["cold"]:
                out.update(cold=rate, resident_before=before, device_bytes=io_read_bytes() - io0)
        for _ in range(repeats):
            out["cached"] = max(out["cached"], size / read() / 1e9)
    finally:
        path.unlink()
    out["size"] = size
    return out


def archive_read(run: Path, step: int, series: Path, repeats: int = 3) -> dict[str, float]:
    """One checkpoint's `store.open_archive(run).load(step)` after dropping the run's (and the series')
    files from the page cache (best of `repeats`, with the residency before and the bytes the device
    delivered), then page-cached (best of `repeats`)."""
    files = files_under(run, series)  # the series too: an import may reference its files in place
    out = {"cold_s": np.inf, "warm_s": np.inf}
    for _ in range(repeats):
        drop_from_cache(files)
        before, io0 = cache_fraction(files), io_read_bytes()
        t0 = time.perf_counter()
        leaves = store.open_archive(run).load(step)
        cold = time.perf_counter() - t0
        if cold < out["cold_s"]:
            out.update(cold_s=cold, resident_before=before, device_bytes=io_read_bytes() - io0)
        out["bytes"] = sum(np.asarray(v).nbytes for v in leaves.values())
        del leaves
    for _ in range(repeats):
        t0 = time.perf_counter()
        store.open_archive(run).load(step)
        out["warm_s"] = min(out["warm_s"], time.perf_counter() - t0)
    return out


def cold_word(resident: float, device_bytes: int, nbytes: int) -> str:
    """'cold' when the page cache held (almost) nothing before and the device delivered the bytes."""
    if math.isnan(resident):  # mincore refused
        return "cache state unknown"
    if resident < 0.02 and (device_bytes < 0 or device_bytes >= 0.9 * nbytes):
        return "cold"
    return (f"NOT cold: {100 * resident:.0f}% page-cached before, device read "
            f"{100 * max(device_bytes, 0) / nbytes:.0f}% of the bytes")


# -- peak RSS in a fresh process ----------------------------------------------------------------
def vm_hwm_kb() -> int:
    """This process's peak resident set (VmHWM of /proc/self/status, kB; -1 if unknown)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def rss_child(run: Path) -> None:
    """Entry of the --_rss-child subprocess: compute the suite over `run`, print JSON with its peak RSS.

    The peak is VmHWM, the high-water mark of this process's own memory map: ru_maxrss is not used,
    because Linux carries a parent's peak into a child across (v)fork + exec (a child of a 2 GiB
    parent reports ru_maxrss >= 2 GiB before doing anything), which would hide the child's own peak."""
    import scalars

    base = vm_hwm_kb()
    t0 = time.perf_counter()
    report = scalars.compute(run, ["standard"], probe=PROBE, force=True)[0]
    print(json.dumps({"peak_kb": vm_hwm_kb(), "after_imports_kb": base,
                      "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "seconds": time.perf_counter() - t0, "checkpoints": report.checkpoints_computed}))


def rss_run(run: Path) -> dict:
    res = subprocess.run([sys.executable, __file__, "--_rss-child", str(run)], capture_output=True, text=True,
                         check=False)
    if res.returncode != 0:
        raise RuntimeError(f"RSS child on {run} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- the run ------------------------------------------------------------------------------------
def machine_info(threads: int) -> str:
    import jax

    versions = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
    for dist in ("torch", "transformers", "transformer-lens"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "missing"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{datetime.datetime.now().isoformat(timespec='seconds')} {platform.platform()} {platform.machine()}, "
            f"{os.cpu_count()} cores, {mem:.0f} GiB, backend {jax.default_backend()}, torch threads {threads}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}\n{versions}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", type=int, default=16)
    ap.add_argument("--peer-checkpoints", type=int, default=2, help="checkpoints the TL loop runs (the first K)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench_public_series",
                    help="series folders and run dirs (kept and reused)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the TL peer")
    ap.add_argument("--again-checkpoints", type=int, default=1,
                    help="checkpoints the engine computes again after the peer, bracketing it (0: none)")
    ap.add_argument("--skip-tl", action="store_true")
    ap.add_argument("--rss", action="store_true", help="peak RSS at 16 and 64 checkpoints (fresh subprocesses)")
    ap.add_argument("--rss-counts", type=int, nargs=2, default=list(RSS_COUNTS), metavar=("N1", "N2"),
                    help="the two checkpoint counts of --rss (default 16 64)")
    ap.add_argument("--small", action="store_true", help="a small GPT-NeoX (2 layers, 4 heads, d 64) for checks")
    ap.add_argument("--_rss-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._rss_child is not None:
        return rss_child(args._rss_child)
    args.peer_checkpoints = max(0, min(args.peer_checkpoints, args.checkpoints))
    shape, tag = (SMALL, "small") if args.small else (PYTHIA_70M, "70m")
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    have_torch = torch_available()
    print(machine_info(args.threads))
    print(f"load average at the start {os.getloadavg()[0]:.2f}, workdir {wd}")
    if not have_torch:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            raise SystemExit("torch and transformers are needed to make the series (save_pretrained); install the "
                             "optional extra: pip install -e '.[bench]' (torch first)") from None
        print("TransformerLens loop: will be skipped (transformer-lens is not installed; pip install -e '.[bench]')")
    fig: list[tuple[str, str, str]] = []  # (figure, value, note) for the final table
    peaks: list[float] = [matmul_peak()]

    # -- series and import
    base_series = series_dir = wd / ("series" if tag == "70m" else f"series_{tag}")
    t0 = time.perf_counter()
    dirs = make_series(base_series, shape, args.checkpoints)
    made = time.perf_counter() - t0
    # a series folder with more step folders than asked (from an earlier, larger run) imports them all:
    # import from a folder that holds exactly the first N (hardlinks, so no data is copied)
    extra = sorted(p for p in series_dir.iterdir() if p.is_dir() and p.name.startswith("step")
                   and p not in dirs)
    if extra:
        series_dir = link_series(wd / f"series_{tag}_first{args.checkpoints}", dirs, args.checkpoints)
    run, import_s = import_series(series_dir, wd / f"run_{tag}_{args.checkpoints}", args.checkpoints)
    from scalars.engine._plan import load_run_model_config

    _, config = load_run_model_config(run)
    steps = [int(s) for s in store.open_archive(run).steps]
    ckpt_bytes = sum(p.stat().st_size for p in dirs[0].iterdir())
    run_bytes = sum(p.stat().st_size for p in files_under(run))
    mode = "references the series in place" if (run / "checkpoints.ref.json").is_file() else "holds a copy"
    print(f"\nseries: {len(dirs)} checkpoints in {series_dir} ({ckpt_bytes / 1e6:.0f} MB each, made/reused in "
          f"{made:.1f} s); run {run} {mode}: {run_bytes / 1e6:.0f} MB on disk, "
          + (f"imported in {import_s:.1f} s ({import_s / len(dirs):.2f} s/ckpt)" if import_s is not None
             else "reused"))
    print(f"model: L={config.n_layers} H={config.n_heads} d={config.d_model} d_mlp={config.mlp_width} "
          f"V={config.vocab_size} parallel_residual={config.parallel_residual} rotary_pct={config.rotary_pct}; "
          f"probe {PROBE} ({BATCH} x {2 * REPEAT + 1} tokens)")
    fig.append(("checkpoint size (safetensors)", f"{ckpt_bytes / 1e6:.0f} MB", f"run dir {run_bytes / 1e6:.0f} MB "
                f"for {len(steps)}: the run {mode}"))
    if import_s is not None:
        fig.append(("import_hf", f"{import_s / len(dirs):.2f} s/ckpt", "setup, not in the comparison"))

    # -- the engine over every checkpoint
    engine = time_engine(run)
    print(f"\nengine ({engine['n']} ckpts): {engine['per_ckpt']:.2f} s/ckpt end to end ({engine['first']:.1f} s to "
          f"the first block, compile included), steady {engine['steady']:.2f} s/ckpt, traces {engine['traces']}")
    peaks.append(matmul_peak())
    stored = store.open_scalars(run)

    # -- the TransformerLens loop on the first K checkpoints
    peer_steps = steps[:args.peer_checkpoints]
    res: dict[str, float] = {}
    if have_torch and not args.skip_tl and peer_steps:
        tokens = probe_tokens(run)
        tl = NeoXLensLoop(tokens, args.threads)
        tl(dirs[0], ablations=False)  # warm: imports, first-call allocations (clean forward only)
        times, diffs = [], []
        for s, d in zip(peer_steps, dirs):
            got, t = tl(d)
            times.append(t)
            diffs.append(max_diffs(got, stored.sel(step=s)))
            print(f"TL step {s}: load {t['load']:.2f} s, clean forward {t['clean']:.2f} s, {config.n_layers * config.n_heads} "
                  f"ablations {t['ablations']:.1f} s; max |TL - engine| "
                  + ", ".join(f"{k} {v:.1e}" for k, v in diffs[-1].items()))
        res["tl"] = float(np.mean([t["total"] for t in times]))
        res["tl_load"] = float(np.mean([t["load"] for t in times]))
        res["tl_fwd"] = float(np.mean([t["ablations"] / (config.n_layers * config.n_heads) for t in times]))
        worst = {k: max(d[k] for d in diffs) for k in diffs[0]}
        res["diff"] = max(worst.values())
        print(f"TransformerLens loop: {res['tl']:.1f} s/ckpt over {len(peer_steps)} ckpts (torch {args.threads} "
              f"threads), max |TL - engine| {res['diff']:.1e}{'' if res['diff'] < TOLERANCE else '  MISMATCH'}")
        fig.append(("max |TL - engine|", f"{res['diff']:.1e}",
                    ", ".join(f"{k} {v:.0e}" for k, v in worst.items()) + ("" if res["diff"] < TOLERANCE
                                                                            else "  MISMATCH")))
    elif not have_torch:
        print("TransformerLens loop: skipped (install the optional extra: pip install -e '.[bench]', torch first)")
    else:
        print("TransformerLens loop: skipped (--skip-tl or --peer-checkpoints 0)")
    peaks.append(matmul_peak())

    # -- the engine again, on the peer's checkpoints (bracketing the peer; compiled program reused)
    again = None
    if peer_steps and "tl" in res and args.again_checkpoints > 0:
        again = time_engine(run, steps=",".join(map(str, peer_steps[:args.again_checkpoints])))
        print(f"engine again ({again['n']} ckpts, program compiled): {again['per_ckpt']:.2f} s/ckpt end to end, "
              f"first block {again['first']:.2f} s")
        peaks.append(matmul_peak())

    unembed = unembed_rates(config)
    print(f"one head's unembedding ({BATCH * 2 * REPEAT} x {config.d_model} x {config.vocab_size}): matmul alone "
          f"{unembed['matmul']:.0f} GFLOP/s, with the CE over materialised logits {unembed['matmul+CE']:.0f} GFLOP/s")

    # -- reading
    del stored
    gc.collect()  # drop the peer's models: pages still mapped (safetensors mmap) cannot leave the cache
    disk = disk_read_rate(wd)
    read = archive_read(run, steps[-1], series_dir)
    disk_word = cold_word(disk["resident_before"], disk["device_bytes"], disk["size"])
    read_word = cold_word(read["resident_before"], read["device_bytes"], read["bytes"])
    print(f"\ndisk sequential read (1 GiB fresh file after DONTNEED, {disk_word}): {disk['cold']:.2f} GB/s; "
          f"page-cached re-read {disk['cached']:.2f} GB/s")
    print(f"archive load of one checkpoint ({read['bytes'] / 1e6:.0f} MB): {read['cold_s']:.2f} s after DONTNEED "
          f"({read_word}; device read {read['device_bytes'] / 1e6:.0f} MB), {read['warm_s']:.2f} s page-cached")
    peaks.append(matmul_peak())

    # -- peak RSS at 16 and 64 checkpoints, each in a fresh process
    rss = {}
    counts = tuple(args.rss_counts)
    if args.rss:
        real = make_series(base_series, shape, min(counts))  # reused where present
        for n in counts:
            src = link_series(wd / f"series_{tag}_rss{n}", real, n)
            r, _ = import_series(src, wd / f"run_{tag}_rss{n}", n)
            rss[n] = rss_run(r)
            print(f"peak RSS at {n} ckpts: {rss[n]['peak_kb'] / 2**20:.2f} GiB (VmHWM; after imports "
                  f"{rss[n]['after_imports_kb'] / 2**20:.2f} GiB; ru_maxrss {rss[n]['ru_maxrss_kb'] / 2**20:.2f} GiB "
                  f"can carry the parent's peak), {rss[n]['seconds'] / n:.2f} s/ckpt")

    # -- figures
    peak = max(peaks)
    flops = suite_flops(config)
    best = min(engine["per_ckpt"], again["per_ckpt"]) if again else engine["per_ckpt"]
    steady = min(engine["steady"], again["per_ckpt"]) if again else engine["steady"]
    rate = flops["engine"] / steady / 1e9
    fig += [
        ("engine, end to end", f"{engine['per_ckpt']:.2f} s/ckpt", f"{engine['n']} ckpts, compile, load, write incl."),
        ("engine, first block", f"{engine['first']:.1f} s", "compile + first checkpoint"),
        ("engine, steady", f"{engine['steady']:.2f} s/ckpt", "after the first block, compile excluded"),
    ]
    if again:
        fig.append(("engine again (peer's ckpts)", f"{again['per_ckpt']:.2f} s/ckpt", "compiled, end to end"))
    if "tl" in res:
        fig += [
            ("TransformerLens loop", f"{res['tl']:.1f} s/ckpt", f"{len(peer_steps)} ckpts; load {res['tl_load']:.2f} s, "
                                                                 f"{res['tl_fwd']:.2f} s per ablated forward"),
            ("ratio TL / engine", f"{res['tl'] / best:.1f}x", f"end to end; {res['tl'] / steady:.1f}x vs steady"),
            ("TL GFLOP/s", f"{flops['full_forwards'] / res['tl'] / 1e9:.0f}",
             f"{flops['full_forwards'] / 1e9:.0f} GFLOP/ckpt (1 + L*H full forwards), "
             f"{100 * flops['full_forwards'] / res['tl'] / 1e9 / peak:.0f}% of peak"),
        ]
    fig += [
        ("matmul peak", f"{peak:.0f} GFLOP/s", f"best 2048^3 float32 matmul of {len(peaks)} in this run"),
        ("engine GFLOP/s (steady)", f"{rate:.0f}", f"{flops['engine'] / 1e9:.0f} GFLOP/ckpt analytic, "
                                                   f"{100 * rate / peak:.0f}% of peak; unembedding "
                                                   f"{100 * flops['unembed_share']:.0f}% of the FLOPs"),
        ("unembedding of one head", f"{unembed['matmul+CE']:.0f} GFLOP/s",
         f"with the CE over materialised (B, S-1, V) logits; the matmul alone {unembed['matmul']:.0f} GFLOP/s"),
        ("disk sequential read", f"{disk['cold']:.2f} GB/s", f"1 GiB fresh file, {disk_word}; page-cached "
                                                              f"{disk['cached']:.2f} GB/s"),
        ("archive load, one ckpt", f"{read['cold_s']:.2f} s", f"{read['bytes'] / read['cold_s'] / 1e9:.2f} GB/s = "
                                                            f"{100 * read['bytes'] / read['cold_s'] / 1e9 / disk['cold']:.0f}% "
                                                            f"of the disk's rate; {read_word}"),
        ("archive load, page-cached", f"{read['warm_s']:.2f} s", f"{read['bytes'] / read['warm_s'] / 1e9:.2f} GB/s "
                                                               f"(= {100 * read['bytes'] / read['warm_s'] / 1e9 / disk['cached']:.0f}% "
                                                               f"of a cached file read); {100 * read['warm_s'] / steady:.1f}% "
                                                               "of a steady ckpt"),
    ]
    for n, r in rss.items():
        fig.append((f"peak RSS, {n} ckpts", f"{r['peak_kb'] / 2**20:.2f} GiB", f"fresh process (VmHWM), after "
                                                                             f"imports {r['after_imports_kb'] / 2**20:.2f} "
                                                                             f"GiB; {r['seconds'] / n:.2f} s/ckpt"))
    if len(rss) == 2:
        a, b = (rss[n]["peak_kb"] for n in counts)
        fig.append((f"peak RSS {counts[1]} / {counts[0]} ckpts", f"{b / a:.2f}x", "1.00x: no growth with the count"))
    w = max(len(f) for f, _, _ in fig)
    v = max(len(x) for _, x, _ in fig)
    print(f"\n{'figure':<{w}}  {'value':>{v}}  note")
    for f, x, note in fig:
        print(f"{f:<{w}}  {x:>{v}}  {note}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} ({datetime.datetime.now().isoformat(timespec='seconds')})")


if __name__ == "__main__":
    main()
