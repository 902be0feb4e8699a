"""Evaluation runs and method comparisons end to end: `bora-diffusion compare` and `evaluate` on the embedded
default with the two example concepts, two methods and a tiny CLIP built from a config (random weights).

The numbers mean nothing as alignment; what is checked is that they are what the stated formulas give: retention
is composed / alone from the written JSON, each mean is the scorer's on the images written, the CSV has one row
per method and concept, the chart decodes, and the matched ranks are the nearest in trainable parameters.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from test_evaluate import TINY, TINY_CONFIG

from bora_diffusion.adapters import available
from bora_diffusion.cli import main
from bora_diffusion.config import AdapterConfig, TrainConfig
from bora_diffusion.embeddings import add_token
from bora_diffusion.errors import ConfigError, SlotError
from bora_diffusion.evaluation import (
    ClipScorer,
    CompareSettings,
    Comparison,
    ConceptFileError,
    ConceptResult,
    Conventions,
    EvalConcept,
    EvaluationReport,
    ReferenceImagesError,
    RunSettings,
    SettingScores,
    evaluate_concepts,
    match_budgets,
    trainable_parameters,
)
from bora_diffusion.evaluation.run_settings import OTHER_WORDS
from bora_diffusion.formats import read_adapter, save_adapter
from bora_diffusion.generate import SamplingSettings
from bora_diffusion.inject import concepts, inject
from bora_diffusion.slots import SlotLedger
from bora_diffusion.world.context import context_accuracy
from bora_diffusion.world.scoring import WorldScorer

METHODS = ("lora", "sbora_fa")
NAMES = ("kettle", "robot")
REPO = Path(__file__).resolve().parents[1]
FOLDERS = [str(REPO / "concepts" / name) for name in NAMES]
SCORING = ["--backbone", TINY, "--weights", "none", "--images", "1", "--steps", "2", "--device", "cpu"]


@contextlib.contextmanager
def one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads per process spin against the other
    processes' and run these tiny models ~30x slower (measured: 13 s vs 0.4 s for one batch of 4 images)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("clip_configs_runs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return TINY


@pytest.fixture(scope="session")
def compared(tmp_path_factory, tiny_clip):
    """One `bora-diffusion compare` of two methods on both example concepts (3 steps each, token embeddings
    trained too), its output folder and the home folder holding the embedded default it ran on."""
    root = tmp_path_factory.mktemp("compare")
    home, out = root / "home", root / "out"
    with pytest.MonkeyPatch.context() as patch, one_thread():
        patch.setenv("BORA_DIFFUSION_HOME", str(home))
        args = ["compare", *FOLDERS, "--out", str(out), "--method", METHODS[0], "--method", METHODS[1]]
        budget = ["--rank", "2", "--train-steps", "3", "--lr", "1e-2", "--train-embedding", "--quiet"]
        budget += ["--embedding-lr", "5e-3"]
        code = main([*args, *budget, *SCORING])
    assert code == 0
    return out, home


@pytest.fixture
def home(compared, monkeypatch) -> Path:
    monkeypatch.setenv("BORA_DIFFUSION_HOME", str(compared[1]))
    return compared[1]


def test_compare_writes_one_row_per_method_and_concept(compared, capsys):
    out, _ = compared
    with (out / "comparison.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], row["concept"]) for row in rows] == [(m, n) for m in METHODS for n in NAMES]
    data = json.loads((out / "comparison.json").read_text())
    assert [row["method"] for row in data["rows"]] == [row["method"] for row in rows]
    for row, entry in zip(rows, data["rows"], strict=True):
        assert float(row["clip_t_alone"]) == pytest.approx(entry["clip_t_alone"], abs=1e-12)
        assert float(row["clip_i_composed"]) == pytest.approx(entry["clip_i_composed"], abs=1e-12)
    assert data["conventions"]["backbone"] == TINY and data["conventions"]["weights"] is None
    assert "nearest" in data["settings"]["rule_text"] and data["settings"]["train"]["steps"] == 3
    assert data["settings"]["train"]["embedding_learning_rate"] == 5e-3
    assert "token embedding trained too (ED-LoRA) at lr 0.005" in data["settings"]["rule_text"]
    table = (out / "comparison.md").read_text()
    for method in METHODS:
        assert sum(line.startswith(f"| {method} |") for line in table.splitlines()) == 2  # alone and composed
    assert "kettle CLIP-T" in table and "retention T" in table and "random init" in table
    first = rows[0]
    assert f"{float(first['clip_t_alone']):.4f} +- {float(first['clip_t_alone_sem']):.4f}" in table


def test_a_saved_comparison_reads_back_and_renders_the_same(compared, tmp_path):
    out, _ = compared
    comparison = Comparison.load(out / "comparison.json")
    assert comparison.markdown() == (out / "comparison.md").read_text()
    assert comparison.csv() == (out / "comparison.csv").read_text()
    assert comparison.to_dict() == json.loads((out / "comparison.json").read_text())
    paths = comparison.save(tmp_path)
    assert paths["png"].read_bytes() == (out / "comparison.png").read_bytes()  # the chart is deterministic


def test_compare_chart_is_a_png_with_bars(compared):
    image = Image.open(compared[0] / "comparison.png")
    image.load()
    assert image.format == "PNG" and image.width >= 800 and image.height >= 300
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    # The two Okabe-Ito colors of the two concepts' "alone" bars are present.
    for color in ((0, 114, 178), (213, 94, 0)):
        assert (pixels == color).all(axis=1).sum() > 200


def test_retention_is_composed_over_alone_in_every_report(compared):
    out, _ = compared
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    for method in METHODS:
        data = json.loads((out / method / "eval" / "evaluation.json").read_text())
        assert [c["name"] for c in data["concepts"]] == list(NAMES)
        for entry in data["concepts"]:
            for metric, key in (("clip_t", "retention_t"), ("clip_i", "retention_i")):
                alone, composed = entry["alone"][metric], entry["composed"][metric]
                sem = entry["alone"][f"{metric}_sem"] or 0.0
                expected = composed / alone if alone > max(0.0, 2 * sem) else None
                assert entry["retention"][metric] == (
                    pytest.approx(expected, rel=1e-12) if expected is not None else None
                )
                row = next(r for r in rows if r["method"] == method and r["concept"] == entry["name"])
                assert row[key] == entry["retention"][metric]
        # The image score of generated images against the references is positive for this CLIP, so at least
        # one retention is a number and the test above compared numbers, not only two Nones.
        assert all(entry["retention"]["clip_i"] is not None for entry in data["concepts"])
        report = EvaluationReport.load(out / method / "eval" / "evaluation.json")
        assert report.to_dict()["concepts"] == data["concepts"]


def test_retention_is_null_while_the_alone_mean_is_within_noise_of_zero():
    def result(alone: float, sem: float | None, composed: float = 0.2) -> ConceptResult:
        return ConceptResult(
            name="a", token="<a>", class_word="toy", method="lora", file="a.safetensors", references="a",
            reference_count=1, prompt_set="objects", prompts=("a photo of <a> toy",),
            alone=SettingScores(clip_t=alone, clip_i=alone, images=4, folder="alone", clip_t_sem=sem),
            composed=SettingScores(clip_t=composed, clip_i=composed, images=4, folder="composed"),
        )  # fmt: skip

    # 0.01 +- 0.01 would have read as a retention of 20 (and -11 in a real run with a negative composed mean).
    assert result(0.01, 0.01).retention("clip_t") is None
    assert result(0.019, 0.01).retention("clip_t") is None  # 1.9 standard errors
    assert result(0.021, 0.01).retention("clip_t") == pytest.approx(0.2 / 0.021)
    assert result(0.25, 0.01).retention("clip_t") == pytest.approx(0.8)
    assert result(-0.3, 0.01).retention("clip_t") is None  # a negative mean has no "share kept"
    # With no standard error (one image, or clip_i_sem not given) only the sign rule remains.
    assert result(0.01, None).retention("clip_t") == pytest.approx(20.0)
    assert result(0.01, 0.01).retention("clip_i") == pytest.approx(20.0)
    assert "n/a" in EvaluationReport(
        base_model="b", conventions=Conventions(), weights={}, settings=RunSettings(),
        concepts=(result(0.01, 0.01),),
    ).summary()  # fmt: skip


def test_means_are_the_scorers_on_the_images_written(compared, tiny_clip):
    out, _ = compared
    report = EvaluationReport.load(out / "sbora_fa" / "eval" / "evaluation.json")
    scorer = ClipScorer(Conventions(backbone=tiny_clip, weights=None), device="cpu")
    expected_concepts = {"base": [], "alone": ["robot"], "composed": sorted(NAMES)}
    for setting in ("base", "alone", "composed"):
        result = report.concept("robot")
        folder = out / "sbora_fa" / "eval" / getattr(result, setting).folder
        manifest = json.loads((folder / "manifest.json").read_text())
        assert [entry["seed"] for entry in manifest["images"]] == [0] * 4  # 4 prompts x 1 seed
        assert manifest["setting"] == setting
        assert sorted(manifest["concepts"]) == expected_concepts[setting]
        images = [folder / entry["file"] for entry in manifest["images"]]
        text = scorer.text_alignment(
            images, [e["prompt"] for e in manifest["images"]], tokens={"bxj": "robot"}
        )
        image = scorer.image_alignment(images, REPO / "concepts" / "robot")
        assert getattr(result, setting).clip_t == pytest.approx(text.mean, abs=1e-9)
        assert getattr(result, setting).clip_i == pytest.approx(image.mean, abs=1e-9)
        # Identity: the share of robot's images whose CLIP-I is higher against robot's references than kettle's.
        kettle = scorer.image_alignment(images, REPO / "concepts" / "kettle")
        own_best = np.mean(np.array(image.scores) > np.array(kettle.scores))
        assert getattr(result, setting).identity == pytest.approx(own_best, abs=1e-12)
        assert (
            getattr(result, setting).context is None
        )  # the quick prompt sets are not in the world's grammar
        per_image = json.loads((folder / "clip_i.json").read_text())
        assert per_image["reference_count"] == 8 and per_image["image_count"] == 4
        # The standard error over images is the sample standard deviation of the per-image scores / sqrt(4).
        scores = np.array([entry["score"] for entry in per_image["per_image"]])
        assert getattr(result, setting).clip_i_sem == pytest.approx(scores.std(ddof=1) / 2, rel=1e-9)
        assert getattr(result, setting).clip_t_sem == pytest.approx(np.std(text.scores, ddof=1) / 2, rel=1e-9)


def test_the_base_before_tuning_is_scored_once_and_read_against(compared):
    """compare scores the bare base first (one folder for every method), and each report's gain is alone - base."""
    out, _ = compared
    assert sorted(p.name for p in (out / "base").iterdir()) == sorted(NAMES)
    reports = {m: EvaluationReport.load(out / m / "eval" / "evaluation.json") for m in METHODS}
    for name in NAMES:
        bases = {m: reports[m].concept(name).base for m in METHODS}
        assert bases[METHODS[0]] == bases[METHODS[1]] and bases[METHODS[0]].images == 4
        assert (out / METHODS[0] / "eval" / bases[METHODS[0]].folder).resolve() == (
            out / "base" / name
        ).resolve()
        for report in reports.values():
            concept = report.concept(name)
            assert concept.gain("clip_i") == pytest.approx(
                concept.alone.clip_i - concept.base.clip_i, abs=1e-12
            )
    # The base images carry the token but no adapter: the trained models drew something else from the same seed.
    base_pixels = np.asarray(Image.open(out / "base" / "robot" / "p00-s0.png"), dtype=np.int16)
    alone_pixels = np.asarray(
        Image.open(out / "sbora_fa" / "eval" / "alone" / "robot" / "p00-s0.png"), dtype=np.int16
    )
    assert np.abs(base_pixels - alone_pixels).max() > 0
    table = (out / "comparison.md").read_text()
    base_rows = [line for line in table.splitlines() if line.startswith("| base (before tuning) |")]
    assert len(base_rows) == 1 and f"{reports['lora'].concept('kettle').base.clip_i:.4f}" in base_rows[0]


def test_drift_is_the_gain_again_with_other_words_in_the_tokens_place(compared):
    """compare also draws each concept's prompts with other words instead of its token (every prompt with every
    word, one seed), on the base once and with each method's concept alone; drift = alone_other - base_other, in
    the reports and the CSV."""
    out, _ = compared
    assert sorted(p.name for p in (out / "base_other").iterdir()) == sorted(NAMES)
    rows = {
        (r["method"], r["concept"]): r
        for r in csv.DictReader(io.StringIO((out / "comparison.csv").read_text()))
    }
    for method in METHODS:
        report = EvaluationReport.load(out / method / "eval" / "evaluation.json")
        assert report.settings.other_words == OTHER_WORDS
        for name in NAMES:
            concept = report.concept(name)
            assert (out / method / "eval" / concept.base_other.folder).resolve() == (
                out / "base_other" / name
            ).resolve()
            drift = concept.alone_other.clip_i - concept.base_other.clip_i
            assert concept.drift("clip_i") == pytest.approx(drift, abs=1e-12)
            assert float(rows[method, name]["drift_i"]) == pytest.approx(drift, abs=1e-9)
            sem = math.hypot(concept.alone_other.clip_i_sem, concept.base_other.clip_i_sem)
            assert concept.drift_sem("clip_i") == pytest.approx(sem) and sem > 0
            assert float(rows[method, name]["drift_i_sem"]) == pytest.approx(sem, abs=1e-9)
            manifest = json.loads(
                (out / method / "eval" / concept.alone_other.folder / "manifest.json").read_text()
            )
            drawn = [(entry["prompt"], entry["seed"]) for entry in manifest["images"]]
            expected = [
                (prompt.replace(concept.token, word), 0) for prompt in concept.prompts for word in OTHER_WORDS
            ]
            assert drawn == expected and concept.alone_other.images == len(concept.prompts) * len(OTHER_WORDS)
            # CLIP-T reads each other word as the class word, as it reads the token.
            clip_t = json.loads(
                (out / method / "eval" / concept.alone_other.folder / "clip_t.json").read_text()
            )
            assert not any(word in entry["text"] for entry in clip_t["per_image"] for word in OTHER_WORDS)
    # Same prompts and seeds, the adapter on or off: the tuned model drew something else for the other word too.
    base = np.asarray(Image.open(out / "base_other" / "robot" / "p00-s0.png"), dtype=np.int16)
    tuned = np.asarray(
        Image.open(out / "sbora_fa" / "eval" / "alone_other" / "robot" / "p00-s0.png"), dtype=np.int16
    )
    assert np.abs(base - tuned).max() > 0


def test_matched_ranks_are_the_nearest_in_trainable_parameters(compared, tiny_pipe):
    budgets = json.loads((compared[0] / "comparison.json").read_text())["budgets"]
    assert [(b["method"], b["rank"]) for b in budgets] == [("lora", 2), ("sbora_fa", 4)]
    # On the embedded base most projections are square, so FA (trains B only: out x r) matches LoRA
    # (r x (in + out)) at twice the rank, within 5 %.
    assert abs(budgets[1]["ratio"] - 1) < 0.05
    unet = tiny_pipe.unet
    for budget in match_budgets(unet, available(), rank=4, concepts=2):
        reference = trainable_parameters(unet, AdapterConfig(method="lora", rank=4))

        def gap(rank: int, budget=budget, reference=reference) -> int:
            config = AdapterConfig(budget.method, rank=rank, blocks=budget.blocks)
            return abs(trainable_parameters(unet, config) - reference)

        assert budget.trainable_params == reference * budget.ratio
        assert gap(budget.rank) <= gap(budget.rank + 1)
        if budget.rank > 1:
            assert gap(budget.rank) <= gap(budget.rank - 1)
        assert abs(budget.ratio - 1) < 0.15, budget  # the stated tolerance on the embedded base
    assert concepts(unet) == []  # probes leave the UNet as it was


def test_the_budget_rule_states_every_training_choice_that_differs_from_the_default():
    plain = CompareSettings(train=TrainConfig(steps=50, learning_rate=2e-3)).rule_text()
    assert plain.startswith("same 50 steps, lr 0.002, batch 1") and "embedding" not in plain
    own_lr = CompareSettings(
        train=TrainConfig(train_embedding=True, embedding_learning_rate=5e-3)
    ).rule_text()
    assert "token embedding trained too (ED-LoRA) at lr 0.005" in own_lr
    shared_lr = CompareSettings(train=TrainConfig(train_embedding=True, learning_rate=1e-3)).rule_text()
    assert "token embedding trained too (ED-LoRA) at lr 0.001" in shared_lr
    assert "prior" not in plain and "targets" not in plain  # the defaults go unsaid
    recipe = CompareSettings(targets="cross_kv", train=TrainConfig(prior_weight=0.5)).rule_text()
    assert "prior preservation at weight 0.5" in recipe and "targets cross_kv" in recipe


def test_rank_rule_and_capacity(tiny_pipe):
    same = match_budgets(tiny_pipe.unet, ["lora", "sbora_fb"], rank=3, rule="rank")
    assert [b.rank for b in same] == [3, 3] and same[1].ratio < 0.6  # FB trains in x r only
    with pytest.raises(ConfigError, match="does not fit"):
        match_budgets(tiny_pipe.unet, ["sbora_fa"], rank=20, concepts=2)  # 2 x 20 > 32 input features
    with pytest.raises(ConfigError, match="unknown method"):
        match_budgets(tiny_pipe.unet, ["lora", "sbora"])


def test_evaluate_from_the_command_line(compared, home, tmp_path, capsys):
    files = [compared[0] / "lora" / "train" / f"{name}.safetensors" for name in NAMES]
    assert all(read_adapter(file).token_embedding is not None for file in files)  # --train-embedding reached
    out = tmp_path / "eval"
    pairs = [f"{files[0]}={FOLDERS[0]}", f"{files[1]}={FOLDERS[1]}@quick-object"]  # robot: its own set
    assert main(["evaluate", *pairs, "--out", str(out), "--prompts", "quick-live", *SCORING]) == 0
    printed = capsys.readouterr().out
    assert printed.count("alone     CLIP-T") == 2 and printed.count("retention T") == 2
    assert printed.count("base      CLIP-T") == 2 and printed.count("gain T") == 2
    drift_lines = [line for line in printed.splitlines() if "drift     CLIP-I" in line]
    assert len(drift_lines) == 2 and all(
        " +- " in line and "with other words" in line for line in drift_lines
    )
    data = json.loads((out / "evaluation.json").read_text())
    assert data["settings"]["prompt_set"] == "quick-live" and data["settings"]["seeds"] == [0]
    assert [c["prompt_set"] for c in data["concepts"]] == ["quick-live", "quick-object"]
    assert data["concepts"][0]["prompts"][-1] == "a qwiv kettle in a chef outfit"  # quick-live's last
    assert data["concepts"][1]["references"] == FOLDERS[1]
    assert data["composition"]["fused"] is True and len(data["composition"]["concepts"]) == 2
    assert data["conventions"]["backbone"] == TINY and data["weights"]["kind"] == "random"
    # Same trained files, prompts and seeds as the comparison's lora run but another prompt set: the images
    # differ, the alone-vs-composed structure does not.
    assert sorted(p.name for p in (out / "composed").iterdir()) == sorted(NAMES)

    assert main(["evaluate", str(files[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "FILE=FOLDER" in err and err.count("\n") == 1
    assert main(["evaluate", f"{files[0]}={tmp_path / 'nowhere'}", "--out", str(out), *SCORING]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert main(["evaluate", f"{files[0]}={FOLDERS[0]}", "--out", str(out), "--prompts", "dreambench"]) == 2
    assert "unknown prompt set 'dreambench'" in capsys.readouterr().err
    assert main(["evaluate", f"{files[0]}={FOLDERS[0]}@quick", "--out", str(out)]) == 2
    assert "unknown prompt set 'quick'" in capsys.readouterr().err
    token = read_adapter(files[0]).token
    assert (
        main(["evaluate", f"{files[0]}={FOLDERS[0]}", "--out", str(out), "--other-words", f"qorb,{token}"])
        == 2
    )
    err = capsys.readouterr().err
    assert f"token {token!r} is also one of the run's other words" in err and err.count("\n") == 1
    assert (
        main(["evaluate", f"{files[0]}={FOLDERS[0]}", "--out", str(out), "--other-words", "two words"]) == 2
    )
    assert "other words must be single words of ASCII letters, got 'two words'" in capsys.readouterr().err


def test_run_checks_every_concept_before_generating(tiny_pipe, tiny_clip, tmp_path):
    scorer = ClipScorer(Conventions(backbone=tiny_clip, weights=None), device="cpu")
    unet = copy.deepcopy(tiny_pipe.unet)
    config = AdapterConfig(method="lora", rank=2)
    inject(unet, config, name="anon")
    nameless = save_adapter(tmp_path / "anon.safetensors", unet, "anon", config, base_name="tiny")
    with pytest.raises(ConceptFileError, match="records no token"):
        evaluate_concepts(
            tiny_pipe, [EvalConcept(nameless, FOLDERS[0])], scorer, tmp_path / "o", base_name="t"
        )
    tokened = save_adapter(
        tmp_path / "a.safetensors", unet, "anon", config, base_name="t", token="zq", class_word="x"
    )
    with pytest.raises(ReferenceImagesError, match="has no images"):
        evaluate_concepts(tiny_pipe, [EvalConcept(tokened, tmp_path)], scorer, tmp_path / "o", base_name="t")
    with pytest.raises(ConceptFileError, match="also the name"):
        twice = [EvalConcept(tokened, FOLDERS[0]), EvalConcept(tokened, FOLDERS[1])]
        evaluate_concepts(tiny_pipe, twice, scorer, tmp_path / "o", base_name="t")
    add_token(
        tiny_pipe.tokenizer, tiny_pipe.text_encoder, "zq", init_word="kettle"
    )  # left by an earlier concept
    with pytest.raises(ConfigError, match="already holds token 'zq'"):
        evaluate_concepts(
            tiny_pipe, [EvalConcept(tokened, FOLDERS[0])], scorer, tmp_path / "o", base_name="t"
        )
    assert not (tmp_path / "o").exists()  # nothing was generated
    with pytest.raises(ConfigError, match="images_per_prompt"):
        RunSettings(images_per_prompt=0)
    with pytest.raises(ConfigError, match=r"other_words must be a sequence of words, e.g. \('qorb',\)"):
        RunSettings(other_words="qorb")


def test_overlapping_slots_fail_before_anything_is_generated_unless_forced(tiny_pipe, tiny_clip, tmp_path):
    """Two concepts trained on separate ledgers with one seed hold the same slots: composing them is refused
    before the alone setting spends its time, and `force` composes them anyway."""
    scorer = ClipScorer(Conventions(backbone=tiny_clip, weights=None), device="cpu")
    config = AdapterConfig(method="sbora_fa", rank=2)
    files = []
    for name, token, class_word in (("kettle", "qwiv", "kettle"), ("robot", "bxj", "robot")):
        unet = copy.deepcopy(tiny_pipe.unet)
        inject(unet, config, name=name, ledger=SlotLedger(seed=0))  # a fresh ledger each: identical slots
        path = tmp_path / f"{name}.safetensors"
        files.append(
            save_adapter(path, unet, name, config, base_name="t", token=token, class_word=class_word)
        )
    specs = [EvalConcept(file, folder) for file, folder in zip(files, FOLDERS, strict=True)]
    fast = RunSettings(images_per_prompt=1, sampling=SamplingSettings(steps=1))
    with pytest.raises(SlotError, match="overlapping slots"):
        evaluate_concepts(tiny_pipe, specs, scorer, tmp_path / "refused", base_name="t", settings=fast)
    assert not (tmp_path / "refused").exists() and concepts(tiny_pipe.unet) == []
    forced = dataclasses.replace(fast, force=True)
    report = evaluate_concepts(tiny_pipe, specs, scorer, tmp_path / "forced", base_name="t", settings=forced)
    assert report.concept("kettle").composed is not None
    assert report.composition["pairs"][0]["overlap"] == 2  # the clash is on record


def test_the_base_is_not_scored_through_a_token_an_earlier_concept_added(tiny_pipe, tiny_clip, tmp_path):
    """Before tuning means the base tokenizer's reading of the token; once a concept has added the token to this
    pipeline that reading is gone, so the before-tuning setting is refused (and runs without it)."""
    scorer = ClipScorer(Conventions(backbone=tiny_clip, weights=None), device="cpu")
    unet = copy.deepcopy(tiny_pipe.unet)
    config = AdapterConfig(method="lora", rank=2)
    inject(unet, config, name="kettle")
    width = tiny_pipe.text_encoder.get_input_embeddings().weight.shape[1]
    file = save_adapter(
        tmp_path / "k.safetensors",
        unet,
        "kettle",
        config,
        base_name="t",
        token="zqb",
        class_word="kettle",
        token_embedding=torch.zeros(width),
    )
    add_token(tiny_pipe.tokenizer, tiny_pipe.text_encoder, "zqb", init_word="kettle")
    fast = RunSettings(images_per_prompt=1, sampling=SamplingSettings(steps=1))
    spec = [EvalConcept(file, FOLDERS[0])]
    with pytest.raises(ConfigError, match="already holds token 'zqb'.*before tuning"):
        evaluate_concepts(tiny_pipe, spec, scorer, tmp_path / "refused", base_name="t", settings=fast)
    assert not (tmp_path / "refused").exists()
    report = evaluate_concepts(
        tiny_pipe,
        spec,
        scorer,
        tmp_path / "o",
        base_name="t",
        settings=dataclasses.replace(fast, before=False),
    )
    assert report.concepts[0].base is None and report.concepts[0].gain("clip_i") is None
    assert not (tmp_path / "o" / "base").exists()


def test_world_prompts_get_context_accuracy_scored_on_the_texts_clip_t_saw(tiny_pipe, tiny_clip, tmp_path):
    scorer = WorldScorer(Conventions(backbone=tiny_clip, weights=None), device="cpu")
    unet = copy.deepcopy(tiny_pipe.unet)
    config = AdapterConfig(method="lora", rank=2)
    inject(unet, config, name="kettle")
    file = save_adapter(
        tmp_path / "k.safetensors", unet, "kettle", config, base_name="t", token="zqb", class_word="kettle"
    )
    fast = RunSettings(prompt_set="world", images_per_prompt=1, sampling=SamplingSettings(steps=1))
    report = evaluate_concepts(
        tiny_pipe, [EvalConcept(file, FOLDERS[0])], scorer, tmp_path / "o", base_name="t", settings=fast
    )
    for setting in ("base", "alone"):
        scores = getattr(report.concepts[0], setting)
        clip_t = json.loads((tmp_path / "o" / scores.folder / "clip_t.json").read_text())
        texts = [entry["text"] for entry in clip_t["per_image"]]
        assert texts[0] == "a large kettle on a green background"  # the token replaced, as CLIP-T read it
        images = [entry["image"] for entry in clip_t["per_image"]]
        expected, _ = context_accuracy(scorer, images, texts)
        assert scores.context == pytest.approx(expected, abs=1e-12)
    assert "context" in report.summary()


def test_the_overview_shows_references_and_every_setting(compared, tmp_path, home):
    """evaluate writes overview.png: per concept a references row, then base, alone and composed rows and both
    with the other word, one first-seed image per prompt, each tile the generated image enlarged to 128 px."""
    files = [compared[0] / "lora" / "train" / f"{name}.safetensors" for name in NAMES]
    out = tmp_path / "eval"
    pairs = [f"{file}={folder}" for file, folder in zip(files, FOLDERS, strict=True)]
    assert main(["evaluate", *pairs, "--out", str(out), *SCORING]) == 0
    sheet = Image.open(out / "overview.png")
    prompts = len(EvaluationReport.load(out / "evaluation.json").concepts[0].prompts)
    assert sheet.size == (prompts * 128, 2 * 6 * (128 + 16))  # 2 concepts x (references + 5 settings)
    tile = np.asarray(sheet.convert("RGB"))[3 * 144 + 16 : 4 * 144, 0:128]  # row 3: kettle composed
    image = (
        Image.open(out / "composed" / "kettle" / "p00-s0.png")
        .convert("RGB")
        .resize((128, 128), Image.NEAREST)
    )
    assert np.array_equal(tile, np.asarray(image))
