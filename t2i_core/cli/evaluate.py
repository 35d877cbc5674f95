"""`python -m t2i_core eval`: the evaluation report of a model folder on a corpus (see t2i_core.evaluation.report)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..evaluation.report import (EvalSet, evaluate, format_report, json_ready, load_eval_set, load_training_images,
                                 read_prompts, split_folders)

def add_eval_arguments(parser) -> None:
    parser.add_argument("--model", default=None, metavar="PATH",
                        help="model folder (default: $T2I_MODEL, else the shipped assets/model/)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="corpus root holding train/ and test/ (a folder with only metadata.jsonl is used as the "
                             "test split, without the retrieval row); with --prompts, only its train/ is used")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="free-form prompts (.jsonl of {\"id\", \"prompt\"} lines, or .txt one a line): no real "
                             "images, so no FD; distractors are the other prompts")
    parser.add_argument("--scorer", default=None, metavar="DIR",
                        help="scorer folder (default: the shipped assets/scorer/)")
    parser.add_argument("--num-distractors", type=int, default=99, metavar="N",
                        help="captions of other emoji each true caption is ranked against (default 99)")
    parser.add_argument("--samples", type=int, default=4, metavar="K", help="images per caption, 1..64 (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples, distractors and random row (default 0)")
    parser.add_argument("--truncation", type=float, default=1.0, help="truncation psi of the generated samples (default 1)")
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance of the generated samples (default 1)")
    parser.add_argument("--exemplars", type=int, default=None, metavar="K", choices=range(4),
                        help="bank entries each generated image draws on (default: the model's default, 1 with a "
                             "bank; 0: the text alone)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="evaluate at most N captions/prompts (a seeded random subset; default all)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write the figures here")
    parser.add_argument("--grid", default=None, metavar="OUT.png",
                        help="save the first generated sample of up to 64 captions/prompts as a grid")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default; 1 is often fastest on a busy machine)")


def run_eval_command(args) -> int:
    """Run `eval` as parsed by `add_eval_arguments`; prints the table. Bad input raises ValueError."""
    from ..pipeline import T2IPipeline
    from ..evaluation.scorer import DEFAULT_SCORER_DIR, ContrastiveScorer, torch_threads, training_folder

    if args.data is None and args.prompts is None:
        raise ValueError("eval needs --data CORPUS (the root holding train/ and test/) or --prompts FILE.")
    if not 1 <= args.samples <= 64:
        raise ValueError(f"--samples must be from 1 to 64, got {args.samples}")
    if args.num_distractors < 1:
        raise ValueError(f"--num-distractors must be at least 1, got {args.num_distractors}")
    if args.limit is not None and args.limit < 2:
        raise ValueError(f"--limit must be at least 2 (R-precision ranks captions against each other), got {args.limit}")
    for flag, suffix in (("json", ".json"), ("grid", ".png")):
        value = getattr(args, flag)
        if value is not None and not str(value).lower().endswith(suffix):
            raise ValueError(f"--{flag} {value!r} must end in {suffix}")
    scorer_dir = Path(args.scorer) if args.scorer else DEFAULT_SCORER_DIR
    if not (scorer_dir / "config.json").is_file():
        raise ValueError(f"no scorer at {str(scorer_dir)!r}; pass --scorer DIR, or train one with "
                         "`python -m t2i_core.evaluation.scorer_training --data CORPUS/train --out assets/scorer` (about 10 CPU minutes).")

    if args.prompts is not None:
        # Free-form prompts have no real images; the corpus only serves retrieval and the random row.
        test_dir = None
        train_dir = None if args.data is None else training_folder(args.data)
        if train_dir is not None and not train_dir.exists():
            raise ValueError(f"--data {args.data!r} does not exist; pass the corpus root (its train/ is used) or omit it.")
        prompts = read_prompts(args.prompts)
    else:
        test_dir, train_dir = split_folders(args.data)
        prompts = None

    with torch_threads(args.threads):
        return _run_eval(args, scorer_dir, test_dir, train_dir, prompts)


def _run_eval(args, scorer_dir: Path, test_dir: Path | None, train_dir: Path | None, prompts: list[str] | None) -> int:
    from ..pipeline import T2IPipeline
    from ..evaluation.scorer import ContrastiveScorer

    pipe = T2IPipeline.from_pretrained(args.model, device=args.device)
    scorer = ContrastiveScorer.from_pretrained(scorer_dir)
    scorer.to(args.device)
    print(f"model: {args.model or 'default'}; scorer: {scorer_dir} (trained seed {scorer.info.get('seed')})", flush=True)

    if prompts is not None:
        if args.limit is not None and args.limit < len(prompts):
            keep = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(args.seed))[: args.limit]
            prompts = [prompts[i] for i in keep.sort().values]
        unique = list(dict.fromkeys(prompts))
        eval_set = EvalSet(unique, unique)
        if len(unique) < len(prompts):
            eval_set.notes.append(f"{len(prompts) - len(unique)} repeated prompt(s) counted once")
    else:
        eval_set = load_eval_set(test_dir, scorer.resolution, args.limit, args.seed)
        print(f"test split {test_dir}: {len(eval_set.images)} images, {len(eval_set.captions)} captions", flush=True)
    train = None
    if train_dir is not None:
        print(f"encoding the training split {train_dir} for the retrieval row", flush=True)
        train = load_training_images(train_dir, scorer.resolution, pipe.text_encoder)

    compositional, names = _compositional_set(args.prompts, train_dir)
    report = evaluate(pipe, scorer, eval_set, train, args.samples, args.num_distractors, args.seed,
                      truncation=args.truncation, guidance=args.guidance, compositional=compositional, names=names,
                      exemplars=args.exemplars)
    report.update({"model": str(args.model or "default"), "scorer": str(scorer_dir),
                   "truncation": args.truncation, "guidance": args.guidance, "exemplars": args.exemplars,
                   "data": None if args.data is None else str(args.data),
                   "prompts": None if args.prompts is None else str(args.prompts)})
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_ready(report), indent=2) + "\n")
        print(f"figures written to {args.json}")
    if args.grid:
        from ..images import image_grid, to_pil

        first = report["generated_images"][:: args.samples][:64]
        grid = image_grid(to_pil(first.float().div(127.5).sub(1.0)), cols=8)
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        grid.save(args.grid)
        print(f"sample grid ({len(first)} captions, row-major, in the order of caption_list in --json) written to {args.grid}")
    return 0


def _compositional_set(prompts: str | None, train_dir: Path | None) -> tuple[list[dict] | None, list[str]]:
    """A prompts file whose lines all have "colour" and "object" (bench/prompts_compositional.jsonl) is a
    compositional set: its rows, and the corpus's emoji names (train/ and test/ beside it) to rank objects among."""
    from ..evaluation.compositional import corpus_names, read_compositional

    rows = read_compositional(prompts) if prompts is not None else None
    if rows is None:
        return None, []
    folders = [] if train_dir is None else [train_dir, train_dir.parent / "test"]
    return rows, corpus_names(folders)

