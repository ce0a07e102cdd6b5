"""MG-3D's cost against MedMAP's: one pre-training step by loss, and one epoch side by side.

1. Step profile (synthetic batch, the demo's CNN experts at 32^3, batch 8 pairs, bf16 autocast
   as training runs on this CPU): seconds per MG-3D step (forward + backward + AdamW), the cost
   of each loss (the full step minus the step with that loss switched off) and the MedMAP
   pre-training step on the same batch and encoder.
2. Epochs side by side (``--cases`` simulated liver cases, the demo's setting): one epoch of
   MedMAP with case-level alignment and one of MG-3D on the same cases, encoder and batch size,
   through the real training stage (``medmap pretrain`` / ``--recipe mg3d``); the epoch's
   training time is measured by a Lightning callback (validation and setup excluded, the
   volume cache warmed before).

    python benchmarks/mg3d_epoch.py --out /tmp/mg3d-epoch            # both parts
    python benchmarks/mg3d_epoch.py --out /tmp/mg3d-epoch --encoder swin   # Swin experts
    python benchmarks/mg3d_epoch.py --out /tmp/mg3d-epoch --quick    # smoke test (tiny)

Prints the tables; ``--json`` writes them (``epoch_ratio`` is ``mg3d_epoch_ratio`` in
docs/results/scale.json).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _common as C  # noqa: E402

LOSSES = ("mim", "mlm", "sfr", "cml", "ssm", "dfa", "itc")


def _mg3d_batch(B, S, L, n_sent, T, V, g):
    return {"image": torch.randn(B, 1, S, S, S, generator=g),
            "model_modality": torch.zeros(B, dtype=torch.long),
            "text": torch.randn(B, T, generator=g), "tokens": torch.randn(B, L, T, generator=g),
            "token_mask": torch.ones(B, L, dtype=torch.bool),
            "input_ids": torch.randint(0, V, (B, L), generator=g),
            "word_mask": torch.ones(B, L, dtype=torch.bool),
            "sentence_index": (torch.arange(L) // max(1, L // n_sent)).clamp(max=n_sent - 1
                                                                            ).repeat(B, 1),
            "sentences": torch.randn(B, n_sent, T, generator=g),
            "sentence_emb": torch.randn(B, n_sent, T, generator=g),
            "sentence_mask": torch.ones(B, n_sent, dtype=torch.bool)}


def step_profile(quick: bool, repeats: int, encoder: str = "cnn") -> dict:
    from medmap.losses.contrastive import modality_contrastive_loss
    from medmap.losses.mg3d import MG3DLoss
    from medmap.models.encoders import CNNConfig
    from medmap.models.medmap import MedMAPConfig, ModalityAwareCLIP
    from medmap.models.mg3d import MG3DConfig, MG3DModel

    B, S, L, n_sent, T, V = (2, 16, 16, 2, 32, 1000) if quick else (8, 32, 64, 6, 384, 30522)
    enc = CNNConfig(channels=(8, 16) if quick else (16, 32, 64), norm="batch")
    if encoder == "swin":             # configs/demo-swin.yaml's experts
        from medmap.models.encoders import SwinConfig

        enc = SwinConfig(feature_size=12, window_size=4, out_stage=3)
    dim = 16 if quick else 96
    g = torch.Generator().manual_seed(0)
    batch = _mg3d_batch(B, S, L, n_sent, T, V, g)

    def timed(make_step) -> float:
        step = make_step()
        step()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    def mg3d(off=()):
        def make():
            cfg = MG3DConfig(modalities=["T2WI"], encoder=enc, embed_dim=dim,
                             shared_encoder=False, text_dim=T, vocab_size=V,
                             mask_patch=8 if not quick else 4,
                             decoder_min_channels=8 if quick else 16)
            for n in off:
                setattr(cfg.losses, n, False)
            torch.manual_seed(0)
            m = MG3DModel(cfg)
            loss, opt = MG3DLoss(cfg.losses), torch.optim.AdamW(m.parameters())

            def step():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = loss(**m(batch, generator=torch.Generator().manual_seed(1)))
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
            return step
        return make

    def medmap():
        cfg = MedMAPConfig(modalities=["T2WI"], classes=["a", "b"], encoder=enc, embed_dim=dim,
                           text_dim=T)
        torch.manual_seed(0)
        m = ModalityAwareCLIP(cfg)
        opt = torch.optim.AdamW(m.parameters())

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = m(batch["image"], batch["model_modality"], batch["text"])
                loss = modality_contrastive_loss(out["image_features"], out["text_features"],
                                                 out["modality"], m.logit_scale.exp(),
                                                 gather=False)["contrastive_loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    full = timed(mg3d())
    rows = [{"what": "MG-3D step (all losses)", "seconds": full}]
    for n in LOSSES:
        t = timed(mg3d((n,)))
        rows.append({"what": f"  cost of {n.upper()} (step without it: {t:.3f} s)",
                     "seconds": full - t})
    base = timed(mg3d(("mim", "mlm")))
    rows.append({"what": "MG-3D step without MIM and MLM", "seconds": base})
    mm = timed(medmap)
    rows.append({"what": "MedMAP pre-training step (same batch and encoder)", "seconds": mm})
    return {"rows": rows, "step_ratio": full / mm, "batch": B, "size": S}


class EpochTimer:
    """Lightning callback: seconds of each training epoch's batches (validation excluded)."""

    def __init__(self):
        self.epochs: list[float] = []
        self._t = 0.0

    def on_train_epoch_start(self, trainer, module):
        self._t = time.perf_counter()

    def on_validation_start(self, trainer, module):
        if self._t:
            self.epochs.append(time.perf_counter() - self._t)
            self._t = 0.0

    def on_train_epoch_end(self, trainer, module):
        if self._t:
            self.epochs.append(time.perf_counter() - self._t)
            self._t = 0.0


def _callback(timer: EpochTimer):
    from lightning.pytorch.callbacks import Callback

    return type("Timer", (Callback,), {k: getattr(timer, k) for k in (
        "on_train_epoch_start", "on_validation_start", "on_train_epoch_end")})()


def epoch_side_by_side(out: Path, cases: int, quick: bool, encoder: str = "cnn") -> dict:
    from medmap.config import load_config
    from medmap.data.sim import simulate
    from medmap.train.config import ExperimentConfig
    from medmap.train.medmap import pretrain
    from medmap.train.mg3d import pretrain_mg3d

    repo = Path(__file__).resolve().parents[1]
    data = out / "data"
    if not (data / "manifest.jsonl").exists():
        simulate(data, cases={"liver": cases}, size=32, seed=0, organs=["liver"])
    yaml = "demo-swin.yaml" if encoder == "swin" else "demo.yaml"
    cfg = load_config(ExperimentConfig, repo / "configs" / yaml, ["data.organ=liver"])
    cfg.data.manifest = str(data / "manifest.jsonl")
    cfg.data.cache_dir = str(out / "cache" / "volumes")
    cfg.text.cache_dir = str(out / "cache" / "text")
    cfg.pretrain.epochs, cfg.pretrain.progress = 2, False
    cfg.pretrain.early_stop_patience = 0
    if quick:
        cfg.data.modalities = ["T2WI", "C+A"]
        cfg.pretrain.epochs = 1
    rows = []
    for name, run in (("MedMAP + case alignment", pretrain), ("MG-3D", pretrain_mg3d)):
        c = copy.deepcopy(cfg)
        c.model.losses.case_alignment = True
        timer = EpochTimer()
        run(c, out / "runs" / f"{name.split()[0]}-{encoder}", callbacks=[_callback(timer)],
            overwrite=True)
        rows.append({"method": name, "epochs_s": timer.epochs,
                     "epoch_s": timer.epochs[-1]})      # the last: caches and threads warm
    return {"rows": rows, "epoch_ratio": rows[1]["epoch_s"] / rows[0]["epoch_s"],
            "cases": cases, "encoder": encoder}


def main(argv: list[str] | None = None) -> dict:
    ap = C.base_parser(__doc__)
    ap.add_argument("--out", default="medmap-mg3d-epoch", help="working folder (data, runs)")
    ap.add_argument("--cases", type=int, default=None, help="simulated liver cases (default 120)")
    ap.add_argument("--skip-epochs", action="store_true", help="the step profile only")
    ap.add_argument("--encoder", choices=["cnn", "swin"], default="cnn",
                    help="experts: the demo's CNN (configs/demo.yaml) or the paper's Swin at a "
                         "small size (configs/demo-swin.yaml)")
    a = ap.parse_args(argv)
    C.setup(a)
    repeats = 1 if a.quick else (a.repeats or 3)
    prof = step_profile(a.quick, repeats, a.encoder)
    C.emit(f"MG-3D step by loss ({a.encoder} experts, 32^3, batch 8, bf16 autocast)",
           ["step", "seconds"], [[r["what"], f"{r['seconds']:.3f}"] for r in prof["rows"]],
           None)
    print(f"step ratio MG-3D / MedMAP: {prof['step_ratio']:.2f}x")
    result = {"step": prof}
    if not a.skip_epochs:
        ep = epoch_side_by_side(Path(a.out), a.cases or (8 if a.quick else 120), a.quick,
                                a.encoder)
        result["epochs"] = ep
        C.emit("One pre-training epoch on the same cases and encoder",
               ["method", "epoch s (last)", "all epochs s"],
               [[r["method"], f"{r['epoch_s']:.1f}", ", ".join(f"{x:.1f}" for x in r["epochs_s"])]
                for r in ep["rows"]], None)
        print(f"epoch ratio MG-3D / MedMAP+case: {ep['epoch_ratio']:.2f}x")
    return C.emit("MG-3D against MedMAP", ["quantity", "value"],
                  [["step ratio", f"{prof['step_ratio']:.2f}"]]
                  + ([["epoch ratio", f"{result['epochs']['epoch_ratio']:.2f}"]]
                     if "epochs" in result else []),
                  a.json, settings={"quick": a.quick, "repeats": repeats}, extra=result)


if __name__ == "__main__":
    main()
