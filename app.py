"""The web app (a Hugging Face Space): Generate, Fine-tune, Animate and About tabs over t2i_core's public API.

Layout and wiring only: pure functions first, then `with gr.Blocks() as demo:`, wiring last. Models come from
`t2i_core` (T2IPipeline through `t2i_app.PipelineCache`), runs (uploads, the training process, progress,
retention) from the app-side package `t2i_app`. Importing this module writes nothing: the runs folder is opened
at launch.

    python app.py        # serves on 0.0.0.0:7860; GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override
    env: T2I_MODEL (model folder used as the shipped one), T2I_RUNS_DIR (./runs), T2I_MAX_RUNS (30),
         T2I_MAX_DISK_GB (5), T2I_MAX_UPLOAD_MB (200), T2I_BROWSER_SECRET (kept in the runs folder if unset)
         T2I_MODEL_PROCESS (1: models in a process of their own, started first; 0: in the app's process)
"""

from __future__ import annotations

import atexit
import functools
import html
import os
import signal
import sys
import threading
from pathlib import Path

# No network at start: no analytics or version check, no Hub lookups.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from t2i_app import model_process  # noqa: E402 - first (stdlib only): the models load while the page's imports run

MODEL_PROCESS = model_process.start_if_wanted() if __name__ == "__main__" else None
import gradio as gr  # noqa: E402

from t2i_app import RUNNING, SCRATCH_KEY, BusyError, PipelineCache, RunManager, views  # noqa: E402
from t2i_app.limits import Gate, animate_cost, cap_malloc_arenas, client_address, door_guard, generate_cost  # noqa
from t2i_app.views import (  # noqa: E402
    CREDITS, CSS, EMPTY_PROMPT, EXAMPLES, FINETUNE_INTRO, GUIDANCE_HINT, NO_DEFAULT_MODEL, NO_RUN_YET, READ_LOSSES,
    SIZES, about_sections, as_files, chosen_seed, exemplar_items, first_value, identify, loss_frame,
    new_sample, progress_html, run_summary, seed_status,
)
from t2i_core import MAX_SEED  # noqa: E402
from t2i_core.video import save_animation  # noqa: E402

ROOT = Path(__file__).resolve().parent
MODEL_CARD = ROOT / "assets" / "MODEL_CARD.md"
MAX_UPLOAD_MB = int(os.environ.get("T2I_MAX_UPLOAD_MB") or 200)

manager = RunManager.from_env()
pipelines = model_process.RemotePipelines(MODEL_PROCESS) if MODEL_PROCESS else PipelineCache(maxsize=3)
gate = Gate(manager.server_limits)  # prompt length and per-visitor rates (docs/SECURITY.md)

GUIDANCE_MAX = 1.3  # pictures of the shipped model break from ~1.5 (bench/guidance_grid.py, docs/BENCHMARKS.md)


# Pure functions: owners and model lists.

owner_of = functools.partial(identify, ids=manager.owner_ids)  # server-signed ids; a forged one gets a fresh one


model_choices = functools.partial(views.model_choices, manager)  # the Generate tab's (key, label) list
base_choices = functools.partial(views.base_choices, manager)  # the Fine-tune tab's "Start from"


def list_models(owner: str | None, request: gr.Request) -> list[list[str]]:
    """[label, key] of every model this visitor may generate with (the `key` goes to /generate's model)."""
    return [list(c) for c in model_choices(owner_of(owner, request))]


def run_status(owner: str | None, request: gr.Request) -> dict:
    """The visitor's latest run: {id, name, status, step, max_steps, images, end, message, model}; {} when they
    have none. `end` says why a run ended: "max steps", "time budget" or "stop requested"."""
    info = manager.latest_run(owner_of(owner, request))
    if info is None:
        return {}
    return run_summary(manager.progress(info.id))


def on_load(owner: str | None, request: gr.Request):
    """Page opened: give the browser an id if it has none, fill the model lists, resume polling a live run."""
    if not manager.owner_ids.verify(owner):
        owner = manager.owner_ids.issue()  # a new visitor, or an id this server did not sign
    models, bases = model_choices(owner), base_choices(owner)
    latest = manager.latest_run(owner)
    return (
        owner,
        gr.Dropdown(choices=models, value=first_value(models)),
        gr.Dropdown(choices=models, value=first_value(models)),
        gr.Dropdown(choices=bases, value=first_value(bases)),
        gr.Markdown(visible=manager.default_model_path() is None),
        gr.Timer(active=latest is not None and latest.status == RUNNING),
    )


# Pure functions: Generate and Animate.


def _pipeline(model_key: str | None, owner: str, prompts: list, request, cost: float):
    # Before any work: a refused prompt never reaches the text encoder. Rates: per owner and per IP, cost by pixels.
    gate.check(prompts, owner, cost, client_address(request))
    if not model_key:
        raise ValueError("No model is available yet: fine-tune one in the Fine-tune tab (start from scratch).")
    return pipelines.get(manager.resolve_model(model_key, owner))


def generate(prompt, model_key, seed, randomize, num_images, truncation, guidance, size, retrieval, owner,
             request: gr.Request):
    """Prompt -> gallery of (image, caption), the seed used, a status line, and the exemplars the images drew on."""
    if not (prompt or "").strip():
        gr.Warning(EMPTY_PROMPT)
        return [], gr.skip(), f"⚠ {EMPTY_PROMPT}", []
    try:
        pipe = _pipeline(model_key, owner_of(owner, request), [prompt], request, generate_cost(num_images, size))
        used = chosen_seed(seed, randomize)
        with manager.visitors_first():  # a fine-tune pauses while this runs
            out = pipelines.run(pipe, prompt, num_images=int(num_images), seed=used, truncation=float(truncation),
                                guidance=float(guidance), size=int(size) or None, exemplars=None if retrieval else 0)
    except ValueError as error:
        gr.Warning(str(error))
        return [], gr.skip(), f"⚠ {error}", []
    folder = manager.new_output_dir()  # files, not PIL images: see as_files
    items = as_files([(image, f"seed {s}") for image, s in zip(out.images, out.seeds)], folder, "image")
    return items, used, seed_status(used, retrieval and pipe.max_exemplars == 0), as_files(
        exemplar_items(pipe, out), folder, "exemplar")


def animate(p1, p2, p3, p4, frames, fps, seed, randomize, truncation, model_key, size, owner, request: gr.Request):
    """Prompts -> (MP4 for the page, [MP4, WebP, GIF] to download, the seed used, a status line)."""
    prompts = [p.strip() for p in (p1, p2, p3, p4) if p and p.strip()]
    if not prompts:
        gr.Warning(EMPTY_PROMPT)
        return None, None, gr.skip(), f"⚠ {EMPTY_PROMPT}"
    try:
        pipe = _pipeline(model_key, owner_of(owner, request), prompts, request, animate_cost(frames, size))
        used = chosen_seed(seed, randomize)
        with manager.visitors_first():
            images = pipelines.run(pipe.interpolate, prompts, frames=int(frames), seed=used,
                                   truncation=float(truncation), size=int(size) or None)
        out = manager.new_output_dir()
        files = [save_animation(images, out / f"animation{ext}", fps=int(fps)) for ext in (".mp4", ".webp", ".gif")]
    except ValueError as error:
        gr.Warning(str(error))
        return None, None, gr.skip(), f"⚠ {error}"
    how = "a walk through one prompt's variations" if len(prompts) == 1 else f"{len(prompts)} prompts"
    return str(files[0]), [str(f) for f in files], used, f"{len(images)} frames, {how}, seed **{used}**."


# Pure functions: Fine-tune.


def check_data(files, owner, request: gr.Request):
    """Uploaded files -> (the loader's report, the upload id or None, the suggested fit for non-square pictures)."""
    if not files:
        return "Upload a .zip, or images with captions, to see what will be used.", None, None
    if problem := gate.refusal([], owner_of(owner, request), cost=2.0, client=client_address(request)):
        gr.Warning(problem)
        return f"⚠ {problem}", None, None
    upload = manager.prepare_upload(files, owner_of(owner, request))
    if not upload.ok:
        gr.Warning(upload.report)
        return f"⚠ {upload.report}", None, None
    report = "✔ " + upload.report.replace("\n", "  \n") + "\n\nReady: press **Start training**."
    return report, upload.id, upload.fit


def start_training(upload_id, base, name, share, minutes, steps, lr, batch_size, owner, fit="pad",
                   request: gr.Request = None):
    owner = owner_of(owner, request)
    try:
        info = manager.start(owner, upload_id, base or SCRATCH_KEY, max_steps=int(steps), minutes=float(minutes),
                             lr=float(lr), batch_size=int(batch_size), name=name or "", shared=bool(share), fit=fit,
                             client=client_address(request))
    except (BusyError, ValueError) as error:
        gr.Warning(str(error))
        return f"⚠ {error}", gr.skip()
    return (f"Started **{html.escape(info.name)}**. You can close this page: training goes on, and the page shows "
            "its progress when you come back.", gr.Timer(active=True))


def stop_training(owner, request: gr.Request):
    try:
        info = manager.stop(owner_of(owner, request))
    except PermissionError as error:
        gr.Warning(str(error))
        return f"⚠ {error}"
    if info is None:
        return "Nothing of yours is training."
    return "Stopping: the trainer finishes its step and saves a checkpoint; the model stays usable."


def poll(owner, seen, request: gr.Request):
    """Timer tick: progress bar, sample grid and loss plot of the visitor's latest run; at its end, the model
    lists and the download button. `seen` ({key, sample, rows}) lets unchanged outputs be skipped."""
    owner = owner_of(owner, request)
    info = manager.latest_run(owner)
    seen = seen or {}
    if info is None:
        return NO_RUN_YET, gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip(), gr.skip(), gr.skip(), seen
    progress = manager.progress(info.id)
    key = f"{info.id}:{info.status}"
    sample, image = new_sample(progress.sample, seen.get("sample"))
    sample_out = gr.skip() if image is None else image
    new_seen = {"key": key, "sample": sample, "rows": len(progress.metrics)}
    plot_out = loss_frame(progress.metrics) if new_seen["rows"] != seen.get("rows") else gr.skip()
    download = models = animate_models = bases = gr.skip()
    if key != seen.get("key") and info.status != RUNNING:
        download = (gr.DownloadButton(value=str(manager.zip_model(info.id, owner)), visible=True)
                    if info.usable else gr.DownloadButton(visible=False))
        choices, base = model_choices(owner), base_choices(owner)
        picked = info.id if info.usable else first_value(choices)
        models = gr.Dropdown(choices=choices, value=picked)
        animate_models = gr.Dropdown(choices=choices, value=picked)
        bases = gr.Dropdown(choices=base)
    elif key != seen.get("key"):
        download = gr.DownloadButton(visible=False)
    timer = gr.Timer(active=info.status == RUNNING)
    return progress_html(progress), sample_out, plot_out, download, timer, models, animate_models, bases, new_seen


# Layout.

# System fonts: the page fetches nothing from elsewhere.
THEME = gr.themes.Soft(primary_hue="orange", font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "monospace"])

with gr.Blocks(title="T2I Emoji GAN", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
    owner = gr.BrowserState(None, storage_key="t2i-owner", secret=manager.owner_ids.browser_state_secret())
    gr.Markdown("# T2I Emoji GAN\nA small text-to-image GAN that draws emoji-style pictures from your words, "
                "on a CPU, in one step.")
    with gr.Tabs():
        with gr.Tab("Generate", id="generate"):
            no_model_note = gr.Markdown(NO_DEFAULT_MODEL, visible=manager.default_model_path() is None,
                                        elem_id="no-model-note")
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    prompt = gr.Textbox(label="Prompt", placeholder="e.g. grinning face, google style", max_length=300,
                                        info="What the picture should show. Press Enter or Generate.",
                                        elem_id="prompt")
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                    gr.Examples(EXAMPLES, inputs=[prompt], label="Try one of these")
                    choices = model_choices("")
                    model = gr.Dropdown(choices, value=first_value(choices), label="Model", allow_custom_value=True,
                                        info="The shipped emoji model, your own fine-tunes, and models others shared.",
                                        elem_id="model")
                    num_images = gr.Slider(1, 16, value=4, step=1, label="Number of images",
                                           info="How many pictures to draw at once.")
                    with gr.Row():
                        seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                         info="Same seed + same settings = same pictures.")
                        randomize = gr.Checkbox(True, label="Randomize seed", info="Draw a new seed each time.")
                    truncation = gr.Slider(0, 2, value=1.0, step=0.05, label="Variety (truncation ψ)",
                                           info="Lower: the most typical picture for the prompt. Higher: more varied.")
                    guidance = gr.Slider(0, GUIDANCE_MAX, value=1.0, step=0.05, label="Prompt strength (guidance)",
                                         info=GUIDANCE_HINT)
                    size = gr.Dropdown(SIZES, value=256, label="Display size",
                                       info="Pictures are drawn at the model's size and enlarged for viewing; "
                                            "enlarging adds no detail.")
                    retrieval = gr.Checkbox(True, label="Draw on retrieved exemplars", elem_id="retrieval",
                                            info="The model looks up the bank pictures whose captions best match "
                                                 "the prompt and draws on them (shown below the images). Untick to "
                                                 "draw from the text alone.")
                with gr.Column(scale=3):
                    gallery = gr.Gallery(label="Images", columns=4, format="png", object_fit="contain",
                                         buttons=["download", "download_all", "fullscreen"], elem_id="gallery")
                    gen_status = gr.Markdown(elem_id="gen-status")
                    exemplars = gr.Gallery(label="Drew on (retrieved from the bank)", columns=8, height=120,
                                           format="png", object_fit="contain", elem_id="exemplars")

        with gr.Tab("Fine-tune", id="finetune"):
            gr.Markdown(FINETUNE_INTRO)
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    # No file_types filter: whatever is uploaded, the loader's report says what was used and why not.
                    files = gr.File(label="Training data", file_count="multiple", elem_id="train-files")
                    report = gr.Markdown("Upload data to see what will be used before training.", elem_id="report")
                    fit = gr.Radio([("Pad with white (nothing cut off)", "pad"), ("Crop the centre square", "crop")],
                                   value="pad", label="Non-square pictures", elem_id="fit",
                                   info="The model draws squares. The report above suggests one for your pictures.")
                    bchoices = base_choices("")
                    base = gr.Dropdown(bchoices, value=first_value(bchoices), label="Start from",
                                       allow_custom_value=True, elem_id="base",
                                       info="Fine-tuning the shipped model or one of yours learns fastest.")
                    run_name = gr.Textbox(label="Name (optional)", placeholder="e.g. my cats", max_length=60)
                    minutes = gr.Slider(1, 120, value=10, step=1, label="Time budget (minutes)",
                                        info="Training stops when this time is up, or at the step count.")
                    share = gr.Checkbox(False, label="Share the finished model with everyone on this server")
                    with gr.Accordion("Advanced", open=False):
                        steps = gr.Slider(0, 20000, value=1000, step=1, label="Steps", elem_id="steps",
                                          info="Training updates; each sees one batch of pictures. 0: your "
                                               "pictures only join the bank, and their captions draw them at once.")
                        lr = gr.Number(2e-4, label="Learning rate", minimum=1e-6, maximum=0.01,
                                       info="How big each update is. Lower is slower but steadier.")
                        batch_size = gr.Slider(1, 64, value=32, step=1, label="Batch size", elem_id="batch-size",
                                               info="Pictures per step; smaller is faster per step.")
                    with gr.Row():
                        start_btn = gr.Button("Start training", variant="primary", elem_id="start-btn")
                        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                    train_status = gr.Markdown(elem_id="train-status")
                with gr.Column(scale=1, min_width=320):
                    progress = gr.HTML("<p>No run yet.</p>", elem_id="progress")
                    sample = gr.Image(label="Samples: the same captions (one per tile) all through the run",
                                      format="png", interactive=False, height=420, elem_id="sample")
                    # No fixed height: one clips the legend.
                    loss_plot = gr.LinePlot(x="step", y="value", color="loss", label="Losses", x_title="step",
                                            y_title="loss", x_axis_format="d", y_axis_format=".3~g",
                                            caption=READ_LOSSES)
                    download = gr.DownloadButton("Download model (.zip)", visible=False, elem_id="download-model")
            timer = gr.Timer(1.0, active=False)
            seen = gr.State(None)
            upload_id = gr.State(None)
            suggested_fit = gr.State(None)

        with gr.Tab("Animate", id="animate"):
            with gr.Row():
                with gr.Column(scale=2, min_width=320):
                    gr.Markdown("Two to four prompts: the picture morphs smoothly from each to the next. "
                                "One prompt alone: a walk through its variations.")
                    a_prompts = [gr.Textbox(label=f"Prompt {i}", max_length=300,
                                            placeholder=["grinning face", "cat face", "", ""][i - 1])
                                 for i in range(1, 5)]
                    a_model = gr.Dropdown(choices, value=first_value(choices), label="Model",
                                          allow_custom_value=True)
                    frames = gr.Slider(2, 120, value=24, step=1, label="Frames",
                                       info="More frames: a longer, smoother clip.")
                    fps = gr.Slider(1, 30, value=12, step=1, label="Frames per second")
                    with gr.Row():
                        a_seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                        a_randomize = gr.Checkbox(True, label="Randomize seed")
                    a_truncation = gr.Slider(0, 2, value=0.8, step=0.05, label="Variety (truncation ψ)")
                    a_size = gr.Dropdown(SIZES, value=256, label="Display size")
                    animate_btn = gr.Button("Animate", variant="primary")
                with gr.Column(scale=3):
                    video = gr.Video(label="Animation", autoplay=True, loop=True, interactive=False)
                    anim_files = gr.File(label="Download: MP4, animated WebP, GIF", file_count="multiple",
                                         interactive=False)
                    anim_status = gr.Markdown()

        with gr.Tab("About", id="about"):
            short, card = about_sections(MODEL_CARD)
            gr.Markdown(short, elem_id="about-short")
            with gr.Accordion("The full model card: measurements, data, training history", open=False):
                gr.Markdown(card, elem_id="model-card")
            gr.Markdown(CREDITS)

    # Wiring.
    polled = [progress, sample, loss_plot, download, timer, model, a_model, base, seen]
    loaded = demo.load(on_load, [owner], [owner, model, a_model, base, no_model_note, timer],
                       api_visibility="private", show_progress="hidden")
    loaded.then(poll, [owner, seen], polled, api_visibility="private", show_progress="hidden")
    gr.on([prompt.submit, generate_btn.click], generate,
          [prompt, model, seed, randomize, num_images, truncation, guidance, size, retrieval, owner],
          [gallery, seed, gen_status, exemplars], api_name="generate")
    files.upload(check_data, [files, owner], [report, upload_id, suggested_fit], api_name="check_data").then(
        lambda f: gr.Radio(value=f) if f else gr.skip(), [suggested_fit], [fit], api_visibility="private", show_progress="hidden")
    files.clear(lambda: ("Upload data to see what will be used before training.", None), None, [report, upload_id],
                api_visibility="private")
    start_btn.click(start_training, [upload_id, base, run_name, share, minutes, steps, lr, batch_size, owner, fit],
                    [train_status, timer], api_name="start_training")
    stop_btn.click(stop_training, [owner], [train_status], api_name="stop_training")
    timer.tick(poll, [owner, seen], polled, api_visibility="private", show_progress="hidden", concurrency_limit=None)
    animate_btn.click(animate, [*a_prompts, frames, fps, a_seed, a_randomize, a_truncation, a_model, a_size, owner],
                      [video, anim_files, a_seed, anim_status], api_name="animate")
    gr.api(list_models, api_name="list_models", concurrency_limit=None)
    gr.api(run_status, api_name="run_status", concurrency_limit=None)

demo.queue(max_size=int(os.environ.get("T2I_QUEUE_SIZE") or 256))


def main() -> None:
    """Serve on GRADIO_SERVER_NAME:GRADIO_SERVER_PORT (default 0.0.0.0:7860)."""
    cap_malloc_arenas()  # before the server's threads: memory freed by requests is reused, not kept per thread
    manager.open()
    atexit.register(manager.shutdown)
    # SIGTERM (a Space restarting, a test ending) runs atexit too, so a live run keeps its last checkpoint.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME") or "0.0.0.0",
        server_port=int(os.environ.get("GRADIO_SERVER_PORT") or 7860),
        max_file_size=f"{MAX_UPLOAD_MB}mb",
        app_kwargs=door_guard(manager.server_limits, demo),  # per-address queue admission; a Space's proxy trusted
        state_session_capacity=manager.server_limits.sessions_max,  # gradio keeps 10,000 sessions' page state
        # Served files: only fresh random folders of downloads; never runs, uploads or the browser secret.
        allowed_paths=[str(manager.outputs_dir)],
        blocked_paths=[str(manager.runs_dir), str(manager.uploads_dir), str(manager.root / ".browser_secret")],
        prevent_thread_lock=True, ssr_mode=False,
        run_history=False,  # nothing recorded in browsers; the footer's "Runs" would be confused with training runs
        footer_links=["api", "gradio", "settings"], theme=THEME, css=CSS,
    )
    default = manager.default_model_path()
    if default is not None and MODEL_PROCESS is None:  # a model process loads it by itself
        # Load the model now rather than on the first click; the page is already being served.
        threading.Thread(target=pipelines.get, args=(default,), daemon=True).start()
    demo.block_thread()


if __name__ == "__main__":
    main()
