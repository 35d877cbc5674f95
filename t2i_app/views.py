"""How the app shows runs: labels, the progress line and bar, the loss plot's rows, the About text. Pure functions
(no gradio), so that the Fine-tune tab's wording is testable without a browser."""

from __future__ import annotations

import html
import re
from pathlib import Path

from .limits import OwnerIds
from .store import FAILED, FINISHED, INTERRUPTED, PLOTTED_LOSSES, RUNNING, STOPPED, Progress, RunInfo, check_owner


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
    """A progress bar and one line saying where the run is."""
    info = progress.run
    step = f"step {progress.step:,} of {info.max_steps:,}"
    if info.status == RUNNING and not progress.metrics:
        text = f"Preparing <b>{html.escape(info.name)}</b>: loading the data and the model…"
    elif info.status == RUNNING:
        budget = f" (budget {info.minutes:g} min)" if info.minutes else ""
        text = f"Training <b>{html.escape(info.name)}</b>: {step}, {clock(progress.elapsed)} elapsed{budget}"
    elif info.status == FINISHED:
        text = f"Finished <b>{html.escape(info.name)}</b> at {step}. It is now in the Generate tab's model list."
    elif info.status == STOPPED:
        text = (f"Stopped <b>{html.escape(info.name)}</b> at {step}; the last checkpoint is kept and usable."
                if info.has_model else f"Stopped <b>{html.escape(info.name)}</b> before its first checkpoint.")
    elif info.status == INTERRUPTED:
        text = f"<b>{html.escape(info.name)}</b> was interrupted (the server restarted) at {step}" + (
            "; its last checkpoint is usable." if info.has_model else ".")
    else:
        text = f"Training <b>{html.escape(info.name)}</b> failed: {html.escape(info.message)}"
    colour = {FAILED: "#d9534f", RUNNING: "var(--color-accent, #f97316)"}.get(info.status, "#22a06b")
    pct = round(100 * progress.fraction)
    return (
        f'<div class="t2i-progress" data-status="{info.status}">'
        f'<div style="height:14px;border-radius:7px;background:var(--neutral-200,#e5e7eb);overflow:hidden">'
        f'<div style="height:100%;width:{pct}%;background:{colour};transition:width .5s"></div></div>'
        f'<p style="margin:.4em 0 0">{pct}% · {text}</p></div>'
    )


LOSS_NAMES = {"d": "discriminator", "g_adv": "generator", "rec": "reconstruction"}


def loss_frame(metrics: list[dict]):
    """metrics.jsonl rows -> a long-format DataFrame for the loss plot; None while there is nothing to plot
    (an empty frame would fix the plot's colour scale as numeric, and later lines would not show)."""
    import pandas as pd

    rows = [(row["step"], float(row[key]), LOSS_NAMES.get(key, key))
            for row in metrics for key in PLOTTED_LOSSES if isinstance(row.get(key), (int, float))]
    return pd.DataFrame(rows, columns=["step", "value", "loss"]) if rows else None


def about_markdown(model_card: Path, credits: str) -> str:
    """The model card (without its YAML front matter, which is for the Hub) and the credits."""
    if model_card.is_file():
        card = model_card.read_text(encoding="utf-8")
        card = re.sub(r"\A---\n.*?\n---\n", "", card, flags=re.S)  # YAML front matter is for the Hub, not people
    else:
        card = ("## Model card\n\nThe model card (`assets/MODEL_CARD.md`) ships with the trained default model, "
                "with its measured quality. Neither is here yet.")
    return card + "\n" + credits
