"""The ``medmap`` CLI's downstream commands: zero-shot, retrieval, segmentation, report
generation, probing and embedding export on a pre-trained vision-language model folder (each a
few lines over :mod:`medmap.downstream`). :func:`add_downstream_parsers` adds them to
:func:`medmap.cli.build_parser`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _downstream_model(a: argparse.Namespace):
    """MODEL: a pre-trained model folder, or ``none`` (no pre-training; needs --config)."""
    if a.model.lower() not in ("none", "random"):
        return a.model
    if not a.config:
        from medmap.config import UserError

        raise UserError("MODEL 'none' (no pre-training) needs --config: an experiment YAML "
                        "(e.g. a pre-training run's config.yaml) for architecture and data")
    from medmap.downstream.vlm import load_vlm

    from medmap.config import load_config
    from medmap.train.config import ExperimentConfig

    return load_vlm(None, experiment=load_config(ExperimentConfig, a.config, []),
                    device=a.device, seed=a.seed)


def _cmd_zeroshot(a: argparse.Namespace) -> int:
    if a.vocabfine:
        from medmap.downstream.vocabfine import vocabfine

        r = vocabfine(_downstream_model(a), a.manifest, a.vocabfine, eval_split=a.split,
                      knowledge=a.knowledge, out_dir=a.out, cache_dir=a.cache_dir,
                      device=a.device, seed=a.seed)
        b, f = r["before"], r["after"]
        print(f"{a.split}: VocabFine with {a.vocabfine} case(s) per class: zero-shot AUC "
              f"{_f(b['auc'])} -> {_f(f['auc'])} (95% CI {_ci(f['ci'])}), accuracy "
              f"{_f(b['accuracy'])} -> {_f(f['accuracy'])}; {Path(a.out) / 'vocabfine.json'}")
        return 0
    from medmap.downstream.zeroshot import zeroshot

    r = zeroshot(_downstream_model(a), a.manifest, split=a.split, knowledge=a.knowledge,
                 out_dir=a.out, prompts=a.prompts, score=a.score, cache_dir=a.cache_dir,
                 batch_size=a.batch_size, device=a.device, seed=a.seed, language=a.language)
    print(f"{a.split}: n={r['n']} zero-shot macro AUC {_f(r['auc'])} (95% CI {_ci(r['ci'])}), "
          f"accuracy {_f(r['accuracy'])} (chance {_f(r['chance_accuracy'])}); "
          f"{Path(a.out) / 'zeroshot.json'}")
    return 0


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(ci) -> str:
    return "n/a" if not ci or ci[0] is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


def _cmd_retrieve(a: argparse.Namespace) -> int:
    from medmap.downstream.retrieval import retrieval

    r = retrieval(_downstream_model(a), a.manifest, split=a.split, out_dir=a.out,
                  cache_dir=a.cache_dir, batch_size=a.batch_size, device=a.device, seed=a.seed)
    rows = [("per-sequence", r["per_sequence"], r["per_sequence"]["gallery"]),
            ("case", r["case"], (r["case"] or {}).get("n")), ("pooled", r["pair"], r["pair"]["n"])]
    for name, block, n in rows:
        if not block:
            continue
        for d in ("report_to_volume", "volume_to_report"):
            m = block[d]
            print(f"{a.split} {name:12s} {d:16s} gallery {n:>6.0f}  " + "  ".join(
                f"R@{k} {_f(m[f'R@{k}'])} (chance {_f(m[f'chance@{k}'])})" for k in (1, 5, 10)))
    print(f"{Path(a.out) / 'retrieval.json'}")
    return 0


def _cmd_segment(a: argparse.Namespace) -> int:
    from medmap.downstream.segment import segment

    r = segment(_downstream_model(a), a.manifest, a.out, modality=a.modality, mask=a.mask,
                train_split=a.train_split, eval_split=a.split, epochs=a.epochs,
                batch_size=a.batch_size, lr=a.lr, seed=a.seed, write_masks=not a.no_masks,
                cache_dir=a.cache_dir, device=a.device)
    print(f"{a.split}: dice={r['dice']} ({r['modality']}); {Path(a.out) / 'segment.json'}")
    return 0


def _cmd_generate_report(a: argparse.Namespace) -> int:
    from medmap.downstream.report_gen import report_generation

    r = report_generation(_downstream_model(a), a.manifest, a.out, train_split=a.train_split,
                          eval_split=a.split, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                          seed=a.seed, cache_dir=a.cache_dir, device=a.device,
                          per_case=a.per_case)
    bleu = r["bleu"] or {}
    rouge = f" ROUGE-L={r['rouge_l']:.3f}" if r.get("rouge_l") is not None else ""
    print(f"{a.split}: n={r['n_eval']} " + " ".join(f"{k}={v:.3f}" for k, v in bleu.items())
          + rouge + f"; {Path(a.out) / 'report_gen.json'}")
    ce = r.get("clinical")
    if ce and ce["n"]:
        c = ce["ceiling"]
        print(f"clinical accuracy={ce['accuracy']:.3f} macro-F1={ce['macro_f1']:.3f} "
              f"(a diagnosis in {ce['with_finding']:.0%} of the generated reports); extractor "
              f"ceiling on the true reports: accuracy={c['accuracy']:.3f} "
              f"macro-F1={c['macro_f1']:.3f} ({ce['extractor']})")
    return 0


def _cmd_probe(a: argparse.Namespace) -> int:
    from medmap.downstream.probe import probe

    r = probe(_downstream_model(a), a.manifest, a.out, mode=a.mode, train_split=a.train_split,
              eval_split=a.split, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
              seed=a.seed, cache_dir=a.cache_dir, device=a.device)
    m = r[a.split] or {}
    print(f"{a.split} ({a.mode}): n={m.get('n', 0)} accuracy={m.get('accuracy')} "
          f"auc={m.get('auc')}; {Path(a.out) / f'probe-{a.mode}.json'}")
    return 0


def _cmd_embed(a: argparse.Namespace) -> int:
    from medmap.downstream.embed import export_embeddings

    r = export_embeddings(_downstream_model(a), a.manifest, a.out, split=a.split,
                          cache_dir=a.cache_dir, batch_size=a.batch_size, device=a.device,
                          seed=a.seed)
    print(f"volume embeddings {r['volume_embeddings']['shape']}, text embeddings "
          f"{r['text_embeddings']['shape']}; {Path(a.out) / 'embeddings.json'}")
    return 0


def add_downstream_parsers(sub) -> None:
    """Add the downstream commands (zeroshot, retrieve, segment, generate-report, probe,
    embed) to the ``medmap`` sub-command parsers ``sub``."""
    def common(name: str, helptext: str, split: str | None = "test", train: bool = False,
               epochs: int | None = None):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("model", help="pre-trained model folder (save_pretrained), or 'none' for "
                                     "no pre-training (with --config)")
        q.add_argument("--manifest", required=True, help="JSONL / CSV manifest of the cases")
        q.add_argument("--out", required=True, help="output folder (metrics JSON and files)")
        q.add_argument("--split", default=split,
                       help="evaluation split" if split else "only this split (default: all)")
        if train:
            q.add_argument("--train-split", default="train",
                           help="split the task's head is trained on (default: train)")
        if epochs is not None:
            q.add_argument("--epochs", type=int, default=epochs,
                           help=f"training epochs of the task's head (default: {epochs})")
            q.add_argument("--lr", type=float, default=1e-3,
                           help="learning rate of the task's head (default: 1e-3)")
        q.add_argument("--config", default=None,
                       help="experiment YAML for MODEL 'none' (architecture, data, text model)")
        q.add_argument("--batch-size", type=int, default=4, help="batch size (default: 4)")
        q.add_argument("--cache-dir", default=None, help="preprocessed-volume cache folder")
        q.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: CUDA when available, else the CPU)")
        q.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        return q

    z = common("zeroshot", "zero-shot abnormality classification with class-knowledge prompts")
    z.add_argument("--knowledge", default=None,
                   help="class-knowledge YAML (default: the shipped configs/class-knowledge.yaml)")
    z.add_argument("--prompts", choices=["both", "appearance", "names"], default="both",
                   help="per-sequence appearance prompts, case-level diagnosis names, or both "
                        "(their logits averaged)")
    z.add_argument("--score", choices=["softmax", "posneg"], default="softmax",
                   help="softmax over classes (CLIP standard) or, in addition, the per-class "
                        "positive / negative prompt score")
    z.add_argument("--language", choices=["real", "random"], default="real",
                   help="random: the control with every prompt embedding replaced by a fixed "
                        "random vector of the same norm (the language removed)")
    z.add_argument("--vocabfine", type=int, default=0, metavar="N",
                   help="CT-VocabFine: first fine-tune the text projection and the experts' "
                        "projections on N labelled training cases per class")
    z.set_defaults(func=_cmd_zeroshot)

    common("retrieve", "report-to-volume / volume-to-report retrieval (Recall@K beside chance)"
           ).set_defaults(func=_cmd_retrieve)

    sg = common("segment", "segmentation: SwinUNETR decoder on the pre-trained encoder",
                train=True, epochs=20)
    sg.add_argument("--modality", default=None, help="input modality (default: the first)")
    sg.add_argument("--mask", default="lesion",
                    help="manifest mask to segment: lesion, or an organ mask such as liver")
    sg.add_argument("--no-masks", action="store_true", help="do not write predicted masks")
    sg.set_defaults(func=_cmd_segment)

    gr = common("generate-report", "report generation: Transformer decoder over visual tokens",
                train=True, epochs=20)
    gr.add_argument("--per-case", action="store_true",
                    help="generate each case's global impression from all its sequences "
                         "(default: one report per sequence)")
    gr.set_defaults(func=_cmd_generate_report)

    pb = common("probe", "classification by linear probe or full fine-tuning", train=True,
                epochs=5)
    pb.add_argument("--mode", choices=["linear", "finetune"], default="linear",
                    help="linear: logistic regression on frozen features (default); finetune: "
                         "train the encoder with a classification head")
    pb.set_defaults(func=_cmd_probe)

    common("embed", "export volume and report embeddings (.npy + CSV index)",
           split=None).set_defaults(func=_cmd_embed)
