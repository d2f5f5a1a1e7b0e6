"""The architecture registry: each architecture's module declares and registers its own spec;
`register` refuses a name, alias or class already taken; a new architecture needs only register()."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from srkd_cli import archs
from srkd_cli.archs import ARCHS, ArchSpec, SRModel, build_model, detect_arch, get_arch, list_archs, register, spec_for
from srkd_cli.errors import ConfigError


class Toy(SRModel):
    """One conv to sub-pixels and a shuffle; its `probe.weight` key is what detection looks for."""

    @staticmethod
    def feature_names_for(width: int, **_) -> tuple:
        return tuple(f"P{i + 1}" for i in range(width // 4))

    def __init__(self, scale: int = 2, width: int = 8):
        super().__init__()
        self.scale, self.feature_names = scale, self.feature_names_for(width)
        self.probe = nn.Conv2d(3, width, 3, padding=1)
        self.tail = nn.Sequential(nn.Conv2d(width, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def _forward(self, x, names):
        f = torch.relu(self.probe(x))
        return self.tail(f), {n: f for n in names}


def _detect_toy(sd):
    w = sd.get("probe.weight")
    if w is None:
        return None
    return {"width": int(w.shape[0])}, {12: 2, 27: 3, 48: 4}.get(int(sd["tail.0.weight"].shape[0]))


def _toy_spec(name: str = "toy", cls=Toy, aliases=("toy-net",), **kw) -> ArchSpec:
    return ArchSpec(name=name, cls=cls, defaults={"width": 8}, detect=_detect_toy, description="a test architecture",
                    bytes_per_pixel=lambda cfg, s: 4 * (cfg["width"] + 3 * s * s), aliases=aliases, **kw)


@pytest.fixture
def toy():
    """The toy architecture, registered for one test and removed after it, whatever the test did."""
    spec = register(_toy_spec(cpu_bf16_fill=True))
    try:
        yield spec
    finally:
        archs.unregister(spec.name)


def test_every_architecture_is_declared_by_its_own_module():
    modules = set()
    for name, spec in ARCHS.items():
        module = importlib.import_module(spec.cls.__module__)
        assert module.__name__.startswith("srkd_cli.archs."), name
        assert module.SPEC is spec, name  # the module's own declaration, not one made elsewhere
        assert spec.detect.__module__ == module.__name__, name
        modules.add(module.__name__)
    assert len(modules) == len(ARCHS)


@pytest.mark.parametrize("name", list(ARCHS))
def test_feature_names_are_the_models_own(name):
    """The spec's feature names come from the model class (written once): the same for a built model."""
    spec = ARCHS[name]
    with torch.device("meta"):
        model = spec.build(2)
    assert spec.feature_names(spec.config()) == model.feature_names


@pytest.mark.parametrize("taken", [dict(name="squeezesr"), dict(aliases=("edsr",)), dict(aliases=("repsr",)),
                                   dict(name="edsrt", aliases=())])
def test_a_name_or_alias_already_taken_is_refused(taken):
    before = dict(ARCHS)
    with pytest.raises(ValueError, match="already names"):
        register(_toy_spec(**{"name": "toy", **taken}))
    assert dict(ARCHS) == before and get_arch("edsr").name == "edsr-t"


def test_a_duplicate_within_one_spec_a_shared_class_or_an_unreachable_name_is_refused(toy):
    with pytest.raises(ValueError, match="already names"):
        register(_toy_spec(name="toy2", aliases=("toy-net",)))  # another's alias
    with pytest.raises(ValueError, match="already names"):
        register(_toy_spec(name="toy3", aliases=("toy3",)))  # its own name again
    with pytest.raises(ValueError, match="class Toy"):
        register(_toy_spec(name="toy4", aliases=()))  # spec_for could not tell the two apart
    with pytest.raises(ValueError, match="lookup form"):
        register(_toy_spec(name="Toy_5", cls=type("Toy5", (Toy,), {}), aliases=()))
    assert [n for n in ARCHS if n.startswith("toy")] == ["toy"]


def test_the_registry_is_read_only():
    with pytest.raises(TypeError):
        ARCHS["toy"] = _toy_spec()  # type: ignore[index]


def test_a_registered_architecture_works_through_every_lookup(toy):
    assert list_archs()[-1] == "toy" and get_arch("TOY") is get_arch("toy_net") is toy
    model = build_model("toy-net", 3, width=12)
    assert model.feature_names == toy.feature_names(toy.config(width=12)) == ("P1", "P2", "P3")
    assert spec_for(model) is toy
    spec, cfg, scale = detect_arch(model.state_dict())
    assert (spec, cfg, scale) == (toy, {"width": 12}, 3)
    out, feats = model.forward_with_features(torch.rand(1, 3, 5, 7), ["P2"])
    assert out.shape == (1, 3, 15, 21) and set(feats) == {"P2"}
    with pytest.raises(ConfigError, match="toy option width=0"):
        build_model("toy", 2, width=0)

    from srkd_cli.runtime.cpu import cpu_bf16_units
    from srkd_cli.training.teacher_cache import fill_precision

    # filling the teacher cache in bf16 on the CPU is the spec's own fact
    assert fill_precision("auto", torch.device("cpu"), model) == ("bf16" if cpu_bf16_units() else "fp32")


def test_unregister_removes_the_name_and_its_aliases():
    spec = register(_toy_spec())
    assert archs.unregister("toy") is spec
    for name in ("toy", "toy-net"):
        with pytest.raises(ConfigError, match="unknown architecture"):
            get_arch(name)
    assert "toy" not in ARCHS
