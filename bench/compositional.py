"""Compositional prompts: a known object in a colour that no emoji of it has ("a blue banana").

Nearest-caption retrieval fails these by construction (the corpus has no blue banana), so they separate a model
that composes a colour with an object from one that looks up its training images. Each image is checked twice:

  colour   deterministic: the dominant hue of its saturated pixels is the asked colour (hue bins: `HUES` in
           t2i_core/evaluation/compositional.py);
  object   the evaluation scorer ranks the object's bare name ("banana") first among it and N names of other emoji
           from the corpus (default 99): the object is still that object.

Rows: the model's samples (`generated`) and, with --data, retrieval's nearest training images (`retrieval`).

The checks live in t2i_core/evaluation/compositional.py, shared with `python -m t2i_core eval --prompts
bench/prompts_compositional.jsonl`, which prints the same figures beside its table (and the copy check); this script
is a thin wrapper that runs these checks alone (no R@1/FD rows, no copy check).

    python bench/compositional.py [--model PATH] [--scorer DIR] [--data CORPUS] [--prompts FILE] [--samples 4]
        [--seed 0] [--threads 1] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from t2i_core.evaluation.compositional import candidates, corpus_names, read_compositional, score  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped assets/model/)")
    parser.add_argument("--scorer", default=None, help="scorer folder (default: the shipped assets/scorer/)")
    parser.add_argument("--data", default=None, help="corpus root: distractor names, and the retrieval row")
    parser.add_argument("--prompts", default=str(Path(__file__).with_name("prompts_compositional.jsonl")))
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--num-distractors", type=int, default=99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from t2i_core import T2IPipeline
    from t2i_core.evaluation.report import (_resize_uint8, generated_images, image_features, load_training_images,
                                            retrieved_images)
    from t2i_core.evaluation.scorer import ContrastiveScorer, pooled_text_vectors, torch_threads

    rows = read_compositional(args.prompts)
    if rows is None:
        parser.exit(2, f"error: {args.prompts} is not a compositional set (.jsonl lines with prompt, object, colour)\n")
    prompts = [r["prompt"] for r in rows]
    data = Path(args.data) if args.data else None
    names = corpus_names([data / "train", data / "test"] if data else [])
    report = {"prompts": len(rows), "samples": args.samples, "seed": args.seed, "rows": {}}
    with torch_threads(args.threads):
        pipe = T2IPipeline.from_pretrained(args.model)
        scorer = ContrastiveScorer.from_pretrained(args.scorer, text_encoder=pipe.text_encoder)
        images = _resize_uint8(generated_images(pipe, prompts, args.samples, args.seed), scorer.resolution)
        report["rows"]["generated"] = score(scorer, images, image_features(scorer, images), rows, args.samples, names,
                                            args.num_distractors, args.seed)
        if data is not None and (data / "train").is_dir():
            train = load_training_images(data / "train", scorer.resolution, pipe.text_encoder)
            idx = retrieved_images(train, pooled_text_vectors(pipe.text_encoder, prompts), args.samples)
            found = _resize_uint8(train.images[idx], scorer.resolution)
            report["rows"]["retrieval"] = score(scorer, found, image_features(scorer, found), rows, args.samples, names,
                                                args.num_distractors, args.seed)
    print(f"compositional set {args.prompts}: {len(rows)} prompts x {args.samples} samples; object R@1 among "
          f"{candidates(names, args.num_distractors)} names")
    print(f"{'row':<10} {'colour':>7} {'object':>7} {'both':>7}")
    for name, fig in report["rows"].items():
        print(f"{name:<10} {fig['colour']:>7.3f} {fig['object']:>7.3f} {fig['both']:>7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
