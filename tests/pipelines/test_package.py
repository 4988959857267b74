"""The package's shape: no import circle, one pipeline per task on shared machinery, SDEdit = flow.sample."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mupd.pipelines as pipelines
from mupd.pipelines import Pipeline
from mupd.pipelines.inputs import image_to_tensor

PACKAGE = Path(pipelines.__file__).parent


def local_imports(path: Path) -> set[str]:
    """Modules of the pipelines package that ``path`` imports anywhere (function bodies included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(alias.name for alias in node.names)
    return out


def test_pipelines_package_has_no_import_circle():
    graph = {p.stem: local_imports(p) & {q.stem for q in PACKAGE.glob("*.py")} for p in PACKAGE.glob("*.py")}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            assert state.get(dep) != 1, f"import circle: {' -> '.join(path + [dep])}"
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # shared machinery never reaches up to the tasks
    tasks = {"generate", "vary", "stain", "translate", "pipeline", "augment", "cli"}
    assert not graph["base"] & tasks and not graph["conditions"] & tasks


@pytest.fixture(scope="module")
def patch(sample_data):
    return Image.open(sorted((sample_data / "pcam/valid/1").iterdir())[0]).convert("RGB").crop((16, 16, 48, 48))


def test_each_task_pipeline_loads_the_folder_and_matches_pipeline(gen, generate_dir, stain_dir, patch):
    from mupd.pipelines import GeneratePipeline, PipelineBase, StainPipeline, TranslatePipeline, VaryPipeline

    generator = GeneratePipeline.from_pretrained(generate_dir, device="cpu")
    assert type(generator) is GeneratePipeline and isinstance(generator, PipelineBase)
    assert not hasattr(generator, "stain")  # one task per class
    a = generator(label="1", n=2, steps=2, guidance=2.0, seed=0, output_type="np")
    b = gen(label="1", n=2, steps=2, guidance=2.0, seed=0, output_type="np")
    assert np.array_equal(a.images, b.images) and a.parameters[1]["mupd:seed"] == 1

    varier = VaryPipeline(gen.bundle, device="cpu")
    assert np.array_equal(varier(patch, strength=0.5, steps=2, seed=1, output_type="np").images,
                          gen.vary(patch, strength=0.5, steps=2, seed=1, output_type="np").images)
    translator = TranslatePipeline(gen.bundle, device="cpu")
    assert np.array_equal(translator(patch, strength=0.5, steps=2, output_type="np").images,
                          gen.translate(patch, strength=0.5, steps=2, output_type="np").images)
    stainer = StainPipeline.from_pretrained(stain_dir, device="cpu")
    both = Pipeline(stainer.bundle, device="cpu")
    assert np.array_equal(stainer(patch, output_type="np").images, both.stain(patch, output_type="np").images)


def test_sdedit_is_flow_sample_started_part_way(gen, patch):
    from mupd.flow import sample

    out = gen.vary(patch, strength=0.5, use_reference=False, steps=6, sampler="euler", seed=7, output_type="pt")
    with torch.no_grad():
        x0 = gen.vae.encode(image_to_tensor([patch]))
        x_t = 0.5 * x0 + 0.5 * gen.noise([7])
        direct = gen.vae.decode(sample(gen.model, x_t, {}, method="euler", steps=3, t_start=0.5))
    expected = ((direct.clamp(-1, 1) + 1) * 127.5).round() / 255
    assert torch.equal(out.images, expected.float())
    assert out.parameters[0]["mupd:steps"] == 6 and out.parameters[0]["mupd:steps_run"] == 3
