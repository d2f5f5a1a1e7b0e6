import pytest
import torch

from srkd_cli.archs import ARCHS, build_model, count_params, detect_arch, get_arch, list_archs
from srkd_cli.errors import ConfigError


@pytest.mark.parametrize("blocks,params", [(4, 910_152), (3, 692_832), (2, 475_512), (1, 258_192)])
def test_swinir_parameter_counts_match_spec(blocks, params):
    assert count_params(build_model("swinir", scale=2, blocks=blocks)) == params


def test_registry_lists_the_architectures():
    assert list_archs() == ["edsr-t", "carn-m", "imdn", "bsrn", "squeezesr", "repsr", "swinir", "esrgan", "compact"]
    assert get_arch("EDSR_T") is ARCHS["edsr-t"]
    with pytest.raises(ConfigError, match="unknown architecture 'vdsr'"):
        get_arch("vdsr")
    with pytest.raises(ConfigError, match="has no option"):
        build_model("squeezesr", 2, depth=3)
    with pytest.raises(ConfigError, match="scale 5"):
        build_model("squeezesr", 5)


@pytest.mark.parametrize("arch,cfg", [("edsr-t", {"modules_per_block": 2}), ("imdn", {"blocks": 2}), ("bsrn", {"blocks": 2}), ("carn-m", {}), ("squeezesr", {}),
                                      ("swinir", {"blocks": 1, "depth": 2}), ("compact", {"n_feats": 8, "convs": 3})])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_shapes_features_and_detection(arch, cfg, scale):
    torch.manual_seed(0)
    model = build_model(arch, scale, **cfg).eval()
    x = torch.rand(2, 3, 13, 18)
    with torch.no_grad():
        out, feats = model.forward_with_features(x, model.feature_names)
        plain = model(x)
    assert out.shape == (2, 3, 13 * scale, 18 * scale)
    assert torch.equal(out, plain)  # asking for features does not change the output
    assert set(feats) == set(model.feature_names)
    spec, found_cfg, found_scale = detect_arch(model.state_dict())
    assert (spec.name, found_scale) == (arch, scale)
    assert found_cfg == spec.config(**cfg)


def test_teacher_and_student_features_are_comparable():
    t = build_model("edsr-t", 2, modules_per_block=1)
    s = build_model("squeezesr", 2)
    x = torch.rand(1, 3, 16, 16)
    _, ft = t.forward_with_features(x, ["T1", "T2", "T3"])
    _, fs = s.forward_with_features(x, ["S1", "S2", "S3"])
    for i in (1, 2, 3):
        assert ft[f"T{i}"].shape == fs[f"S{i}"].shape == (1, 64, 16, 16)


def test_swinir_students_share_teacher_keys():
    teacher = build_model("swinir", 2, blocks=4).state_dict()
    for blocks in (1, 2, 3):
        student = build_model("swinir", 2, blocks=blocks).state_dict()
        assert all(k in teacher and teacher[k].shape == v.shape for k, v in student.items())


def test_unknown_feature_name_is_an_error():
    with pytest.raises(KeyError, match="no feature"):
        build_model("squeezesr", 2).forward_with_features(torch.rand(1, 3, 8, 8), ["T1"])
