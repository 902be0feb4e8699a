"""The page: four tabs wired to the named endpoints of `handlers.Handlers`.

Every event that does work has an `api_name`, so whatever the page can do, a `gradio_client` script can do too.
The Train tab's setting fields are made from the schema (`training.form_settings()`), so a method registered
with an option gets its field, preset and recipe value with no line here; `train_start` takes them as one named
form (a JSON object) beside the uploaded files, and the page's Start button sends the same form.
Generation, interference checks and evaluations share one concurrency group as large as the pipeline pool;
training is not an event at all but a job on the queue's own thread, which the page polls once a second.
"""

from __future__ import annotations

import gradio as gr

from ..adapters import available
from ..evaluation import PRESETS as CONVENTIONS
from ..evaluation import prompt_sets
from ..pipeline import default_guidance
from ..settings import Setting
from . import compose, evaluate, library, training
from .calls import Blocks
from .handlers import Context, Handlers, guard

PIPELINES = "pipelines"  # concurrency id of every event that borrows a pipeline
POLL_SECONDS = 1.0


# What each target preset adapts, for the Targets dropdown (a preset added to inject shows by its name alone).
TARGET_WORDS = {
    "attention": "every attention projection",
    "cross_kv": "cross-attention keys and values, for concepts to fuse",
    "self_attention": "self-attention only",
}


def field(setting: Setting, value, elem_id: str):
    """The component of one form setting: its type picks the kind, its help is the field's info line, and an
    option is labelled with the method that declares it ("Blocks (bora_block)")."""
    owner = training.option_owner(setting.name)
    label = setting.name.replace("_", " ").capitalize() + (f" ({owner})" if owner else "")
    common = dict(label=label, info=setting.help, elem_id=elem_id)
    if setting.name == "method":
        return gr.Dropdown(available(), value=value, allow_custom_value=True, **common)
    if setting.name == "targets":
        words = [(f"{TARGET_WORDS.get(p, p)} ({p})", p) for p in setting.choices]
        return gr.Dropdown(words, value=value, **common)
    if setting.kind is bool:
        return gr.Checkbox(value, **common)
    if setting.choices:
        return gr.Dropdown(list(setting.choices), value=value, **common)
    if setting.kind is str:
        return gr.Textbox(value, **common)
    # No minimum / maximum on the component: the form's own check names the field and its range.
    return gr.Number(value, precision=0 if setting.kind is int else None, **common)


def form_fields(values: dict) -> dict:
    """The Train tab's setting fields (`training.form_settings()`), laid out three to a row, by name."""
    settings = training.form_settings()
    made = {}
    for start in range(0, len(settings), 3):
        with gr.Row():
            for setting in settings[start : start + 3]:
                elem_id = "train-" + setting.name.replace("_", "-")
                made[setting.name] = field(setting, values[setting.name], elem_id)
    return made


def build(ctx: Context) -> gr.Blocks:
    h = Handlers(ctx)
    g = {name: guard(getattr(h, name)) for name in dir(h) if not name.startswith("_") and name != "ctx"}
    workers = ctx.pipelines.workers
    methods = list(available())
    first = training.preset(training.DEFAULT_METHOD)
    folders = h.concept_folders()

    with Blocks(title="bora-diffusion") as demo:
        gr.Markdown(
            f"# bora-diffusion\nConcept tuning on **{ctx.pipelines.name}**: train a concept, keep it in the "
            "library, compose several and generate, then score them with CLIP."
        )
        with gr.Tab("Train", id="train"):
            with gr.Row():
                with gr.Column():
                    source = gr.Radio(
                        ["upload", "folder"], value="upload", label="Images from", elem_id="train-source"
                    )
                    files = gr.File(
                        file_count="multiple",
                        file_types=[".png", ".jpg", ".jpeg", ".webp"],
                        label="Images (png, jpg, webp; a handful of the same subject)",
                        elem_id="train-files",
                    )
                    folder = gr.Dropdown(
                        folders,
                        value=folders[0] if folders else None,
                        label="Concept folder",
                        visible=False,
                        allow_custom_value=True,
                    )
                    name = gr.Textbox(
                        label="Name (the library entry; optional for a folder)", elem_id="train-name"
                    )
                    with gr.Row():
                        token = gr.Textbox(label="Token (a made-up word, e.g. zqmug)", elem_id="train-token")
                        class_word = gr.Textbox(label="Class word (e.g. mug)", elem_id="train-class")
                with gr.Column():
                    fields = form_fields(first)
                    with gr.Row():
                        start = gr.Button("Start training", variant="primary", elem_id="train-start")
                        stop = gr.Button("Stop and save", variant="stop", elem_id="train-stop")
            job_id = gr.Textbox(label="Job", interactive=False, elem_id="train-job")
            progress = gr.HTML(elem_id="train-progress-box")
            status = gr.Markdown(elem_id="train-status")
            with gr.Row():
                loss = gr.LinePlot(x="step", y="loss", title="Loss", height=240)
                samples = gr.Gallery(label="Samples", columns=4, height=240, elem_id="train-samples")
            with gr.Accordion("Job details (JSON)", open=False):
                details = gr.JSON()

        with gr.Tab("Library", id="library") as library_tab:
            refresh = gr.Button("Refresh")
            table = gr.Dataframe(headers=library.COLUMNS, interactive=False, elem_id="library-table")
            with gr.Row():
                pick = gr.Dropdown([], label="Concept", elem_id="library-pick", allow_custom_value=True)
                layout = gr.Radio(list(library.LAYOUTS), value="diffusers", label="Export layout")
            with gr.Row():
                inspect = gr.Button("Inspect")
                export = gr.Button("Export")
                delete = gr.Button("Delete", variant="stop")
            library_msg = gr.Markdown()
            exported = gr.File(label="Exported LoRA (and token embedding)", file_count="multiple")
            inspected = gr.JSON(label="Concept file")

        with gr.Tab("Compose & generate", id="compose") as compose_tab:
            with gr.Row():
                picked = gr.Dropdown(
                    [],
                    multiselect=True,
                    label="Concepts",
                    elem_id="compose-concepts",
                    allow_custom_value=True,
                )
                weights = gr.Textbox(
                    label="Weights (name=weight, default 1)", placeholder="kettle=1, robot=0.8"
                )
                mode = gr.Radio(list(compose.MODES), value="fused", label="Mode")
            check = gr.Button("Check interference")
            report = gr.Markdown(elem_id="compose-report")
            pairs = gr.Dataframe(headers=compose.PAIR_COLUMNS, interactive=False, max_height=240)
            prompt = gr.Textbox(label="Prompt", elem_id="compose-prompt")
            negative = gr.Textbox(label="Negative prompt")
            with gr.Row():
                seed = gr.Number(0, label="Seed", precision=0)
                gen_steps = gr.Number(25, label="Steps", precision=0, elem_id="compose-steps")
                guidance = gr.Number(default_guidance(ctx.pipelines.base), label="Guidance")
                count = gr.Number(4, label="Images", precision=0)
            run = gr.Button("Generate", variant="primary", elem_id="compose-generate")
            with gr.Accordion("Regions: each box draws its own prompt", open=False):
                gr.Markdown(
                    "Boxes in fractions of the image (0, 0 is the top left), each with its prompt; the prompt above "
                    "is the global one around them. Live, only the concepts whose token a box's prompt names act "
                    "inside it. Boxes may not overlap. Or place: each row's text is one word of the prompt above "
                    "(a concept's token), and layout guidance draws what it names inside the box."
                )
                with gr.Row():
                    regions = gr.Dataframe(
                        value=[[0, 0, 0.5, 1, ""], [0.5, 0, 1, 1, ""]],
                        headers=compose.REGION_COLUMNS,
                        datatype=["number", "number", "number", "number", "str"],
                        col_count=(len(compose.REGION_COLUMNS), "fixed"),
                        interactive=True,
                        elem_id="compose-regions",
                    )
                    boxes = gr.Image(label="Boxes", type="pil", interactive=False, elem_id="compose-boxes")
                with gr.Row():
                    run_regions = gr.Button("Generate with regions", elem_id="compose-generate-regions")
                    run_placed = gr.Button("Generate with placement", elem_id="compose-generate-placed")
            gallery = gr.Gallery(label="Images", columns=4, elem_id="compose-gallery")
            gen_msg = gr.Markdown(elem_id="compose-message")
            manifest = gr.File(label="Manifest")

        with gr.Tab("Evaluate & compare", id="evaluate") as evaluate_tab:
            gr.Markdown(
                "Each concept's prompts are generated on the base before tuning and with the concept alone, and "
                "scored (CLIP-T against the prompt, CLIP-I against the concept's own images); with two or more, "
                "also composed, with the share each keeps (retention)."
            )
            with gr.Row():
                eval_pick = gr.Dropdown(
                    [], multiselect=True, label="Concepts", elem_id="eval-concepts", allow_custom_value=True
                )
                prompt_set = gr.Dropdown(
                    list(prompt_sets()), value="quick-object", label="Prompt set", allow_custom_value=True
                )
                conventions = gr.Dropdown(
                    list(CONVENTIONS), value="default", label="Conventions", allow_custom_value=True
                )
            with gr.Row():
                per_prompt = gr.Number(2, label="Images per prompt", precision=0)
                eval_steps = gr.Number(10, label="Steps", precision=0, elem_id="eval-steps")
            evaluate_btn = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
            eval_msg = gr.Markdown(elem_id="eval-message")
            scores = gr.Dataframe(headers=evaluate.COLUMNS, interactive=False, elem_id="eval-table")
            chart = gr.BarPlot(
                x="bar",
                y="score",
                color="metric",
                title="Scores by concept, metric and setting",
                height=300,
                x_label_angle=-30,
                sort=None,
            )
            eval_file = gr.File(label="Report (evaluation.json)")
            gr.Markdown(
                "### Compare methods\nTrain the picked concept folders with each method at a matched budget "
                "(same steps and learning rate; ranks matched by trainable parameters, or all equal), then "
                "evaluate each method's concepts alone and composed."
            )
            with gr.Row():
                cmp_folders = gr.Dropdown(
                    folders,
                    multiselect=True,
                    label="Concept folders",
                    allow_custom_value=True,
                    elem_id="compare-folders",
                )
                cmp_methods = gr.Dropdown(
                    methods,
                    value=[methods[0], training.DEFAULT_METHOD],  # the registry's first (LoRA), the default
                    multiselect=True,
                    label="Methods",
                    allow_custom_value=True,
                    elem_id="compare-methods",
                )
                cmp_rule = gr.Radio(["params", "rank"], value="params", label="Budget rule")
            with gr.Row():
                cmp_rank = gr.Number(4, label="Rank (first method)", precision=0)
                cmp_steps = gr.Number(50, label="Training steps", precision=0)
                cmp_per_prompt = gr.Number(1, label="Images per prompt", precision=0)
                cmp_sample_steps = gr.Number(10, label="Sampling steps", precision=0)
            compare_btn = gr.Button("Compare methods", elem_id="compare-run")
            cmp_msg = gr.Markdown(elem_id="compare-message")
            cmp_table = gr.Dataframe(
                headers=evaluate.COMPARE_COLUMNS, interactive=False, elem_id="compare-table"
            )
            cmp_chart = gr.BarPlot(
                x="bar", y="score", color="metric", title="Alone, by method", height=300, x_label_angle=-30
            )
            cmp_file = gr.File(label="Comparison (Markdown)")

        # ------------------------------------------------------------------------------------------ events
        source.change(
            lambda s: (gr.update(visible=s == "upload"), gr.update(visible=s == "folder")),
            source,
            [files, folder],
            api_visibility="private",
        )
        # A method picked by hand starts from its preset; a concept folder fills the form with its own recipe.
        # `.input`, not `.change`: a folder's recipe that sets the method must not be reset to the preset.
        method = fields["method"]
        presets = [fields[name] for name in training.preset_fields()]
        method.input(g["method_preset"], method, presets, api_name="method_preset")
        recipe = [fields[name] for name in training.recipe_fields()]
        folder.change(g["folder_recipe"], folder, recipe, api_name="folder_recipe")
        source.input(
            lambda s, f: g["folder_recipe"](f) if s == "folder" and f else [gr.update()] * len(recipe),
            [source, folder],
            recipe,
            api_visibility="private",
        )
        # The page sends its components; API clients send one named form (a JSON object) and the files.
        concept_fields = [source, folder, name, token, class_word]
        keys = [*training.CONCEPT_FIELDS, *fields]

        def start_from_page(files_value, *values):
            return g["train_start"](dict(zip(keys, values, strict=True)), files_value)

        start.click(
            start_from_page,
            [files, *concept_fields, *fields.values()],
            [job_id, details],
            api_visibility="private",
        )
        form = gr.JSON(visible=False)
        api_start = gr.Button("train_start", visible=False)
        api_start.click(
            g["train_start"],
            [form, files],
            [job_id, details],
            api_name="train_start",
            api_description=training.form_description(),
        )
        stop.click(g["train_stop"], job_id, details, api_name="train_stop")
        view = [progress, status, loss, samples]
        gr.Timer(POLL_SECONDS).tick(
            g["train_view"], job_id, view, api_visibility="private", show_progress="hidden"
        )
        job_id.change(g["train_view"], job_id, view, api_visibility="private", show_progress="hidden")
        status_btn = gr.Button("status", visible=False)
        status_btn.click(g["train_status"], job_id, details, api_name="train_status")
        folders_btn = gr.Button("folders", visible=False)
        folders_btn.click(g["concept_folders"], None, gr.JSON(visible=False), api_name="concept_folders")

        def names_update():
            choices = h.concept_names()
            return gr.update(choices=choices), gr.update(choices=choices), gr.update(choices=choices)

        refresh_outputs = [pick, picked, eval_pick]
        refresh.click(g["list_concepts"], None, table, api_name="list_concepts")
        for trigger in (refresh.click, library_tab.select, compose_tab.select, evaluate_tab.select):
            if trigger != refresh.click:
                trigger(g["list_concepts"], None, table, api_visibility="private")
            trigger(guard(names_update), None, refresh_outputs, api_visibility="private")
        inspect.click(g["inspect_concept"], pick, inspected, api_name="inspect_concept")
        export.click(g["export_concept"], [pick, layout], exported, api_name="export_concept")
        delete.click(g["delete_concept"], pick, library_msg, api_name="delete_concept").then(
            g["list_concepts"], None, table, api_visibility="private"
        ).then(guard(names_update), None, refresh_outputs, api_visibility="private")

        check.click(
            g["check_interference"],
            [picked, weights],
            [report, pairs],
            api_name="check_interference",
            concurrency_id=PIPELINES,
            concurrency_limit=workers,
        )
        run.click(
            g["generate"],
            [picked, weights, mode, prompt, negative, seed, gen_steps, guidance, count],
            [gallery, manifest, gen_msg],
            api_name="generate",
            concurrency_id=PIPELINES,
            concurrency_limit=workers,
        )
        for button, endpoint in ((run_regions, "generate_regions"), (run_placed, "generate_placed")):
            button.click(  # the same box table, read as regions or as placements
                g[endpoint],
                [picked, weights, mode, prompt, negative, seed, gen_steps, guidance, count, regions],
                [gallery, manifest, gen_msg],
                api_name=endpoint,
                concurrency_id=PIPELINES,
                concurrency_limit=workers,
            )
        regions.change(g["region_preview"], regions, boxes, api_name="region_preview")
        evaluate_btn.click(
            g["evaluate"],
            [eval_pick, prompt_set, conventions, per_prompt, eval_steps],
            [scores, chart, eval_file, eval_msg],
            api_name="evaluate",
            concurrency_id=PIPELINES,
            concurrency_limit=workers,
        )
        compare_btn.click(
            g["compare_methods"],
            [cmp_folders, cmp_methods, cmp_rank, cmp_rule, cmp_steps, prompt_set, conventions, cmp_per_prompt,
             cmp_sample_steps],
            [cmp_table, cmp_chart, cmp_file, cmp_msg],
            api_name="compare_methods",
            concurrency_id="compare",
            concurrency_limit=1,
        )  # fmt: skip
    return demo
