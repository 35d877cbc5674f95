"""Why do free-form prompts score low: wrong phrasing, or a generator that cannot draw what it was trained on?

For each free-form prompt, retrieval takes the K training images whose captions are nearest to it. This script
scores, with the eval scorer and the same R@1 among the prompts as `python -m t2i_core eval --prompts`:

  generated      K samples generated from the prompt itself (eval's "generated" row);
  from caption   one sample generated from the *training caption* of each retrieved image (seed + k);
  retrieval      the retrieved training images themselves (eval's "retrieval" row).

If "from caption" is far below "retrieval", the generator does not reproduce its own training pairs (under-fitting),
and better prompt phrasing would not close the gap; if it is close to retrieval but "generated" is not, the prompt's
wording is what the model misses.

    python bench/fit_check.py --data data/emoji --prompts bench/prompts_freeform.jsonl [--model PATH] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from t2i_core import T2IPipeline  # noqa: E402
from t2i_core.evaluation.metrics import choose_distractors, per_caption_rate, r_precision_hits  # noqa: E402
from t2i_core.evaluation.report import (_resize_uint8, generated_images, image_features,  # noqa: E402
                                        load_training_images, pil_to_uint8, read_prompts, retrieved_images)
from t2i_core.evaluation.scorer import ContrastiveScorer, pooled_text_vectors, torch_threads, training_folder  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped assets/model/)")
    parser.add_argument("--data", required=True, help="corpus root (its train/ is retrieval's database)")
    parser.add_argument("--prompts", default="bench/prompts_freeform.jsonl", help="free-form prompts (.jsonl or .txt)")
    parser.add_argument("--scorer", default=None, help="scorer folder (default: the shipped assets/scorer/)")
    parser.add_argument("--samples", type=int, default=4, help="K: images per prompt (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--json", default=None, help="also write the figures and the per-prompt table here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with torch_threads(args.threads):
        pipe = T2IPipeline.from_pretrained(args.model)
        scorer = ContrastiveScorer.from_pretrained(args.scorer, text_encoder=pipe.text_encoder)
        prompts = list(dict.fromkeys(read_prompts(args.prompts)))
        k, s = len(prompts), args.samples
        train = load_training_images(training_folder(args.data), scorer.resolution, pipe.text_encoder)

        idx = retrieved_images(train, pooled_text_vectors(pipe.text_encoder, prompts), s)  # (k * s,)
        source = [train.captions[i] for i in train.image_caption[idx].tolist()]
        # Image j of a prompt from its j-th retrieved caption, with seed + j as the prompt's own sample j has.
        from_caption = torch.cat([pil_to_uint8(pipe(source[p * s + j], seed=args.seed + j).images)
                                  for p in range(k) for j in range(s)])
        rows = {
            "generated": generated_images(pipe, prompts, s, args.seed, log=lambda *a: None),
            "from caption": from_caption,
            "retrieval": _resize_uint8(train.images[idx], scorer.resolution),
        }
        text_feats = scorer.encode_texts(prompts).cpu()
        true = torch.arange(k).repeat_interleave(s)
        distractors = choose_distractors(list(range(k)), k - 1, args.seed)[true]
        per_prompt = {name: per_caption_rate(r_precision_hits(image_features(scorer, images), text_feats, true,
                                                              distractors), true, k)
                      for name, images in rows.items()}

    means = {name: sum(v) / k for name, v in per_prompt.items()}
    print(f"model: {args.model or 'default'}; {k} prompts, {s} images each; R@1 among the {k} prompts")
    for name, value in means.items():
        print(f"  {name:13s} {value:.3f}")
    print("\nprompt | nearest training caption | generated / from caption / retrieval")
    for p, prompt in enumerate(prompts):
        print(f"{prompt} | {source[p * s]} | " + " / ".join(f"{per_prompt[n][p]:.2f}" for n in rows))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": str(args.model or "default"), "prompts": args.prompts, "samples": s, "seed": args.seed,
            "r_precision": means, "per_prompt": [
                {"prompt": prompt, "retrieved_captions": source[p * s : (p + 1) * s],
                 **{n: per_prompt[n][p] for n in rows}} for p, prompt in enumerate(prompts)],
        }, indent=1) + "\n")
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
