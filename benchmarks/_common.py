"""Shared helpers of the benchmark scripts: timing, peak memory, model configs, tables, JSON.

Not a test utility: the scripts print numbers, they never assert on them.

* :func:`time_fn` - warm-up, then the mean / median / min seconds of ``fn`` (CUDA-synchronised).
* :class:`PeakMemory` - peak memory over a ``with`` block: on CUDA ``max_memory_allocated``; on the
  CPU the process's peak RSS (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` so every
  block gets its own peak; elsewhere a 2 ms sampling thread, or ``ru_maxrss`` as a last resort).
* :func:`swin_config` / :func:`medmap_config` - the paper-size architecture of ``configs/liver.yaml``
  (Swin depths 2-2-2-2, window 7, conv stream 16-32-64-96, embed 256) with the feature size,
  window and checkpointing as knobs.
* :func:`markdown_table`, :func:`emit` (print + optional ``--json``), :func:`machine_info`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# Benchmarks never talk to the Hub: the bundled MiniLM and the tiny BERT are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# ---- arguments ------------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the options every benchmark shares."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, a few seconds: a smoke test, not a measurement")
    ap.add_argument("--json", metavar="OUT", help="also write the rows and settings as JSON")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own choice)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repetitions per row")
    ap.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    return ap


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and quiet the usual warnings; returns the device to run on."""
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")      # modules used without Trainer
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="monai")
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(dev)


# ---- timing ---------------------------------------------------------------------------------
def sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1,
            device: torch.device | str | None = None) -> dict[str, float]:
    """Seconds per call of ``fn``: ``mean``, ``median``, ``min``, ``std`` over ``repeats``."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return {"mean": statistics.fmean(times), "median": statistics.median(times),
            "min": min(times), "std": statistics.pstdev(times) if len(times) > 1 else 0.0,
            "n": len(times)}


class Timer:
    """``with Timer(dev) as t: ...`` -> ``t.seconds``."""

    def __init__(self, device: torch.device | str | None = None):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> Timer:
        sync(self.device)
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._t


# ---- memory ---------------------------------------------------------------------------------
_STATUS = "/proc/self/status"


def _status_kb(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Current resident set size in MiB (``ru_maxrss`` where /proc is missing)."""
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Peak memory (MiB) over a ``with`` block: ``peak_mb`` (absolute), ``delta_mb`` (over the
    level at entry) and ``kind`` (``cuda-allocated``, ``rss`` or ``rss-sampled``)."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.peak_mb = self.delta_mb = self.base_mb = 0.0
        self.kind = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base_mb = torch.cuda.memory_allocated() / 2 ** 20
            self.kind = "cuda-allocated"
            return self
        self.base_mb = rss_mb()
        self._hwm = _reset_hwm()
        self.kind = "rss"
        if not self._hwm:
            self.kind = "rss-sampled"
            self._stop = threading.Event()
            self._max = self.base_mb
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2 ** 20
        elif self._hwm:
            self.peak_mb = (_status_kb("VmHWM") or 0) / 1024
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._max, rss_mb())
        self.delta_mb = max(0.0, self.peak_mb - self.base_mb)


class RSSGuard:
    """A watchdog thread: if the process's resident set exceeds ``limit_gb``, print the figure
    and end the process at once (exit code 3), before the machine runs out of memory. Also
    records the largest RSS it saw (``max_gb``, sampled every ``interval_s``).

    ``with RSSGuard(20): run()``; ``limit_gb=None`` only samples."""

    def __init__(self, limit_gb: float | None, interval_s: float = 0.02, label: str = ""):
        self.limit_gb, self.interval_s, self.label = limit_gb, interval_s, label
        self.max_gb = 0.0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            gb = rss_mb() / 1024
            self.max_gb = max(self.max_gb, gb)
            if self.limit_gb is not None and gb > self.limit_gb:
                print(f"\nRSSGuard: resident memory {gb:.2f} GB exceeded the {self.limit_gb} GB "
                      f"limit{' in ' + self.label if self.label else ''}; stopping the process "
                      "before the machine runs out of memory", file=sys.stderr, flush=True)
                sys.stdout.flush()
                os._exit(3)
            time.sleep(self.interval_s)

    def __enter__(self) -> RSSGuard:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure(fn: Callable[[], Any], repeats: int, warmup: int,
            device: torch.device) -> dict[str, float]:
    """:func:`time_fn` plus the peak memory of the timed calls (warm-up included)."""
    with PeakMemory(device) as mem:
        t = time_fn(fn, repeats, warmup, device)
    return {**t, "peak_mb": mem.peak_mb, "delta_mb": mem.delta_mb, "mem_kind": mem.kind}


# ---- model configs --------------------------------------------------------------------------
def swin_config(feature_size: int = 48, size: int = 128, window: int = 7,
                checkpoint: bool = False, quick: bool = False):
    """The paper's Swin expert (``configs/liver.yaml``); ``quick``: a 1-1-1-1 toy for 32^3."""
    from medmap.models.encoders import SwinConfig

    if quick:
        return SwinConfig(feature_size=feature_size, depths=(1, 1, 1, 1),
                             num_heads=(1, 1, 2, 2), window_size=2, out_stage=3,
                             use_checkpoint=checkpoint)
    return SwinConfig(feature_size=feature_size, depths=(2, 2, 2, 2),
                         num_heads=(3, 6, 12, 24), window_size=window,
                         out_stage=4 if size >= 64 else 3, use_checkpoint=checkpoint)


def medmap_config(modalities: Sequence[str], n_classes: int = 7, feature_size: int = 48,
                  size: int = 128, window: int = 7, checkpoint: bool = False,
                  text_dim: int = 384, quick: bool = False, dropout: float = 0.1,
                  expert_checkpoint: bool = False):
    """MedMAPConfig of ``configs/liver.yaml`` (conv stream 16-32-64-96, embed 256, 4 heads).

    ``checkpoint``: MONAI's per-block Swin checkpointing (``SwinConfig.use_checkpoint``);
    ``expert_checkpoint``: each expert's whole encode recomputed in the backward pass, experts
    one after another (``MedMAPConfig.expert_checkpoint``)."""
    from medmap.models.encoders import CNNConfig
    from medmap.models.medmap import MedMAPConfig

    conv = CNNConfig(channels=(8, 16, 16) if quick else (16, 32, 64, 96))
    return MedMAPConfig(modalities=list(modalities), classes=[f"c{i}" for i in range(n_classes)],
                        encoder=swin_config(feature_size, size, window, checkpoint, quick),
                        conv_stream=conv, embed_dim=32 if quick else 256, text_dim=text_dim,
                        cct_heads=2 if quick else 4, dropout=dropout,
                        expert_checkpoint=expert_checkpoint)


def classifier(cfg, generator: torch.Generator | None = None):
    """A ``MedMAPClassifier`` of ``cfg`` whose stored text-prompt buffers (every buffer named
    ``*prompt*``) hold random embeddings instead of zeros, as a fine-tuned model's would."""
    from medmap.models.medmap import MedMAPClassifier

    model = MedMAPClassifier(cfg)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "prompt" in name and buf.is_floating_point():
                buf.copy_(torch.randn(buf.shape, generator=generator))
    return model


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- output ---------------------------------------------------------------------------------
def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "N/A"
    if isinstance(v, float):
        if v != v:  # NaN
            return "N/A"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits - 1}f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "cpu": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        pass
    if device is not None:
        info["device"] = str(device)
    return info


def emit(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
         json_path: str | None, settings: dict[str, Any] | None = None,
         notes: Sequence[str] = (), extra: dict[str, Any] | None = None,
         device: torch.device | None = None) -> dict[str, Any]:
    """Print ``title``, the settings line, the Markdown table and notes; write JSON if asked."""
    info = machine_info(device)
    print(f"\n## {title}\n")
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if v is not None))
    if settings:
        print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print()
    print(markdown_table(headers, rows))
    for n in notes:
        print(n)
    payload = {"title": title, "machine": info, "settings": settings or {},
               "headers": list(headers), "rows": [list(r) for r in rows], **(extra or {})}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        print(f"\nwrote {json_path}")
    sys.stdout.flush()
    return payload


def tiny_text_encoder(folder: str | Path):
    """A FrozenTextEncoder on a freshly written tiny BERT (hidden 32) under ``folder``."""
    from medmap.text.encoder import FrozenTextEncoder
    from medmap.text.testing import build_tiny_bert

    return FrozenTextEncoder(build_tiny_bert(Path(folder) / "tiny-bert"), device="cpu")


def text_encoder(name: str, folder: str | Path):
    """``"minilm"`` (the bundled model; falls back to the tiny BERT when it does not load offline)
    or ``"tiny"``; returns ``(encoder, name actually used)``."""
    if name == "minilm":
        try:
            from medmap.text.encoder import FrozenTextEncoder

            return FrozenTextEncoder("minilm", device="cpu"), "minilm"
        except (OSError, ModuleNotFoundError) as e:
            print(f"note: MiniLM did not load offline ({type(e).__name__}: {e}); "
                  "using the tiny BERT")
    if name == "bert-base":
        # BioBERT's / BERT-base's architecture (12 layers, 768 wide), random weights: the paper's
        # text encoder's compute without a hub download
        from medmap.text.encoder import FrozenTextEncoder
        from medmap.text.testing import build_tiny_bert

        path = build_tiny_bert(Path(folder) / "bert-base", hidden=768, layers=12, heads=12,
                               max_position_embeddings=512)
        return FrozenTextEncoder(str(path), device="cpu"), "bert-base-sized (random)"
    return tiny_text_encoder(folder), "tiny-bert"
