"""The model zoo: weights.toml parsing, resolution order, and downloads with the real
huggingface_hub client and urllib against a local stand-in server (tests/hubserver.py)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

import srkd_cli
from srkd_cli import zoo as zoo_mod
from srkd_cli.checkpoint import load_checkpoint
from srkd_cli.errors import CheckpointError, ConfigError, ModelNotFoundError
from srkd_cli.zoo import Zoo, get_zoo, sha256_file
from srkd_cli.zoo import download as zoo_download

sys.path.insert(0, str(Path(__file__).parent))
from hubserver import HubServer  # noqa: E402

REPO = "srkd-test/weights"
FILE = "student-x2.safetensors"


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> bytes:
    """A small real safetensors file (~10 KB)."""
    path = tmp_path_factory.mktemp("payload") / "w.safetensors"
    save_file({"head.weight": torch.arange(2304, dtype=torch.float32).reshape(64, 3, 3, 4)}, str(path),
              metadata={"arch": "squeezesr", "scale": "2"})
    return path.read_bytes()


@pytest.fixture
def hub(payload):
    with HubServer() as server:
        server.add_repo(REPO, {FILE: payload})
        server.add_repo("srkd-test/secret", {FILE: payload}, private=True)
        server.add_file("teacher.pth", payload)
        yield server


@pytest.fixture
def env(tmp_path, monkeypatch, hub):
    """Point huggingface_hub and srkd's URL cache at the stand-in server and at tmp_path."""
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("SRKD_CACHE", str(tmp_path / "srkd"))
    monkeypatch.setattr(zoo_download, "_BACKOFF_S", 0.0)
    monkeypatch.setattr(zoo_mod, "_warned_unverified", set())
    return tmp_path


def write_zoo(tmp_path: Path, body: str, bundled: dict = None) -> Zoo:
    toml = tmp_path / "weights.toml"
    toml.write_text(body)
    bundled_dir = tmp_path / "bundled"
    bundled_dir.mkdir(exist_ok=True)
    for name, data in (bundled or {}).items():
        (bundled_dir / name).write_bytes(data)
    return Zoo.from_file(toml, bundled_dir=bundled_dir)


def entry(name: str, *sources: str, scale: int = 2) -> str:
    return f'[models."{name}"]\narch = "squeezesr"\nscale = {scale}\nsources = [{", ".join(sources)}]\n'


def hf(repo=REPO, filename=FILE, revision="main", sha=None) -> str:
    s = f'{{kind = "hf", repo_id = "{repo}", filename = "{filename}", revision = "{revision}"'
    return s + (f', sha256 = "{sha}"}}' if sha else "}")


def url(u: str, sha=None) -> str:
    return f'{{kind = "url", url = "{u}"' + (f', sha256 = "{sha}"}}' if sha else "}")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def forbid_network(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("network used although the file is cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)
    monkeypatch.setattr(zoo_download.urllib.request, "urlopen", boom)


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- the packaged zoo


def test_packaged_zoo_lists_swinir_teachers():
    z = get_zoo()
    assert z.bundled_dir == Path(srkd_cli.__file__).parent / "weights"
    for s, (set5, set14) in {2: (38.14, 33.86), 3: (34.62, 30.54), 4: (32.44, 28.77)}.items():
        e = z.get("swinir4", scale=s)
        assert (e.name, e.arch, e.scale, e.config) == (f"swinir4-x{s}", "swinir", s, {"blocks": 4})
        assert (e.metrics["set5_psnr_y"], e.metrics["set14_psnr_y"]) == (set5, set14)
        assert e.metrics["source"] == "SwinIR paper (DIV2K-trained)"
        release = [x for x in e.sources if x.kind == "url"]
        assert release[0].url == ("https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"
                                  f"002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{s}.pth")


def test_packaged_entries_match_the_architecture_registry():
    """Every entry names a registered architecture, valid config keys and its true parameter count."""
    from srkd_cli.archs import build_model, count_params, get_arch

    for e in get_zoo().list():
        assert e.name.endswith(f"-x{e.scale}"), e.name
        get_arch(e.arch).config(**e.config)
        if e.params is not None:
            assert count_params(build_model(e.arch, e.scale, **e.config)) == e.params, e.name


@pytest.mark.parametrize(
    "body, words",
    [
        ('[models."a-x2"]\nscale = 2\nsources = [{kind = "bundled", file = "a.safetensors"}]', "missing 'arch'"),
        ('[models."a-x2"]\narch = "swinir"\nscale = 5\nsources = [{kind = "url", url = "https://x/a"}]', "scale"),
        ('[models."a-x2"]\narch = "swinir"\nscale = 2\nsource = []', "unknown key"),
        ('[models."a-x2"]\narch = "swinir"\nscale = 2\nsources = []', "non-empty"),
        ('[models."a-x2"]\narch = "swinir"\nscale = 2\nsources = [{kind = "ftp", url = "x"}]', "kind"),
        ('[models."a-x2"]\narch = "swinir"\nscale = 2\nsources = [{kind = "hf", repo_id = "a/b", filename = "w"}]',
         "revision"),
        ('[models."a-x2"]\narch = "swinir"\nscale = 2\nsources = [{kind = "url", url = "https://x/a", sha256 = "abc"}]',
         "sha256"),
        ('[models."a-x2"]\narch = "swinir"\nscale = 2\nsources = [{kind = "bundled", file = "../evil"}]', ".."),
        ('[models."a-x2"\narch = "swinir"', "not valid TOML"),
    ],
)
def test_schema_errors_name_the_file_and_entry(tmp_path, body, words):
    with pytest.raises(ConfigError) as err:
        write_zoo(tmp_path, body)
    assert words in one_line(err) and "weights.toml" in str(err.value)


def test_unknown_name_suggests_close_matches():
    z = get_zoo()
    with pytest.raises(ModelNotFoundError) as err:
        z.get("swinir4-x5")
    assert "swinir4-x4" in one_line(err)
    with pytest.raises(ModelNotFoundError, match="is x2, not x3"):
        z.get("swinir4-x2", scale=3)
    assert z.get("SWINIR4-X2").name == "swinir4-x2"


def test_explicit_path_wins_and_a_missing_path_says_so(tmp_path, monkeypatch):
    f = tmp_path / "swinir4-x2"
    f.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert get_zoo().resolve("swinir4-x2") == Path("swinir4-x2")
    assert get_zoo().resolve(f) == f
    with pytest.raises(ModelNotFoundError, match="no such file"):
        get_zoo().resolve(str(tmp_path / "nope.safetensors"))
    with pytest.raises(CheckpointError, match="is a folder"):
        get_zoo().resolve(str(tmp_path))


def test_identify_is_the_one_decision_file_hub_entry_or_one_line_error(tmp_path, payload, monkeypatch):
    """`Zoo.identify` alone says what a model argument names; resolve and load_model follow it."""
    from srkd_cli import loader

    z = write_zoo(tmp_path, entry("b-x2", f'{{kind = "bundled", file = "b.safetensors", sha256 = "{sha(payload)}"}}')
                  + entry("gone-x2", '{kind = "bundled", file = "gone.safetensors"}'),
                  bundled={"b.safetensors": payload})
    monkeypatch.setattr(zoo_mod, "get_zoo", lambda: z)
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "b-x2"  # a file named like an entry: the file wins
    f.write_bytes(payload)
    assert z.identify("b-x2") == zoo_mod.ModelRef("b-x2", path=Path("b-x2"))
    f.unlink()
    assert z.identify("b-x2").entry.name == "b-x2" and z.identify("B", scale=2).entry.name == "b-x2"  # family + scale
    hub_id = "hf://o/r/w.pth@" + "0" * 40
    assert z.identify(hub_id) == zoo_mod.ModelRef(hub_id, hub_id=hub_id)
    # a zoo name whose file is missing is still a zoo name: the error comes when it is fetched, in one line
    assert z.identify("gone-x2").entry.name == "gone-x2"
    for fetch in (lambda: z.resolve("gone-x2"), lambda: loader.load_model("gone-x2")):
        with pytest.raises(ModelNotFoundError) as err:
            fetch()
        assert one_line(err) == f"model gone-x2: bundled file gone.safetensors: not installed in {tmp_path / 'bundled'}"
    # not a file and not an entry: the same one line from identify, resolve and load_model
    cases = {
        "nope/b-x2.pth": (ModelNotFoundError, "nope/b-x2.pth: no such file (and no model of that name in the zoo)"),
        "b.safetensors": (ModelNotFoundError, "b.safetensors: no such file (and no model of that name in the zoo)"),
        "bundled": (CheckpointError, "bundled: is a folder, not a weights file"),
        "c-x2": (ModelNotFoundError, "unknown model 'c-x2'; did you mean b-x2? (`srkd models` lists them)"),
        "b-x2 ": (ModelNotFoundError, "unknown model 'b-x2 '; did you mean b-x2? (`srkd models` lists them)"),
    }
    for text, (kind, says) in cases.items():
        assert z.identify(text, strict=False) is None
        for decide in (lambda: z.identify(text), lambda: z.resolve(text), lambda: loader.load_model(text)):
            with pytest.raises(kind) as err:
                decide()
            assert one_line(err) == says
    with pytest.raises(ModelNotFoundError, match="model b-x2 is x2, not x3"):
        z.identify("b-x2", scale=3)


# ----------------------------------------------------------------------------- bundled


def test_bundled_file_is_verified_and_needs_no_network(env, payload, monkeypatch):
    z = write_zoo(env, entry("b-x2", f'{{kind = "bundled", file = "b.safetensors", sha256 = "{sha(payload)}"}}',
                             hf()), bundled={"b.safetensors": payload})
    forbid_network(monkeypatch)
    assert z.where("b-x2") == "bundled"
    assert z.resolve("b-x2") == env / "bundled" / "b.safetensors"


def test_damaged_bundled_file_is_reported_not_deleted(env, payload):
    z = write_zoo(env, entry("b-x2", f'{{kind = "bundled", file = "b.safetensors", sha256 = "{sha(b"other")}"}}'),
                  bundled={"b.safetensors": payload})
    with pytest.raises(CheckpointError) as err:
        z.resolve("b-x2")
    assert "reinstall" in one_line(err) and sha(payload) in str(err.value)
    assert (env / "bundled" / "b.safetensors").exists()


def test_missing_bundled_file_falls_through_to_the_hub(env, payload, hub):
    z = write_zoo(env, entry("b-x2", '{kind = "bundled", file = "gone.safetensors"}', hf(sha=sha(payload))))
    assert z.where("b-x2") == "remote"
    assert z.resolve("b-x2", progress=False).read_bytes() == payload
    bundled_only = write_zoo(env, entry("c-x2", '{kind = "bundled", file = "gone.safetensors"}'))
    assert bundled_only.where("c-x2") == "missing"
    with pytest.raises(ModelNotFoundError, match="not installed"):
        bundled_only.resolve("c-x2")


# ----------------------------------------------------------------------------- Hugging Face sources


def test_hf_download_then_cache_with_the_server_stopped(env, payload, hub, monkeypatch, capsys):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich draws its bar as on a terminal
    z = write_zoo(env, entry("h-x2", hf(sha=sha(payload))))
    assert z.where("h-x2") == "remote"
    p = z.resolve("h-x2")
    assert p.read_bytes() == payload and str(p).startswith(str(env / "hf" / "hub"))
    assert [r.method for r in hub.log] == ["HEAD", "GET"]
    assert hub.log[0].path == f"/{REPO}/resolve/main/{FILE}"
    assert FILE in capsys.readouterr().err  # the progress bar's label
    assert z.where("h-x2") == "cached"

    hub.stop()
    forbid_network(monkeypatch)
    assert z.resolve("h-x2") == p


def test_hf_pinned_commit(env, payload, hub):
    commit = hub.repos[REPO].commit
    z = write_zoo(env, entry("h-x2", hf(revision=commit, sha=sha(payload))))
    p = z.resolve("h-x2", progress=False)
    assert commit in str(p) and p.read_bytes() == payload
    assert hub.log[0].path == f"/{REPO}/resolve/{commit}/{FILE}"


def test_offline_mode(env, payload, hub, monkeypatch):
    z = write_zoo(env, entry("h-x2", hf(sha=sha(payload))) + entry("u-x2", url(f"{hub.url}/files/teacher.pth")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("h-x2", "u-x2"):
        with pytest.raises(ModelNotFoundError) as err:
            z.resolve(name)
        assert one_line(err) == f"model {name} is not cached and HF_HUB_OFFLINE=1 is set"
    assert hub.log == []

    monkeypatch.delenv("HF_HUB_OFFLINE")
    p = z.resolve("h-x2", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.stop()
    assert z.resolve("h-x2") == p
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotFoundError, match="offline mode is on"):
        z.resolve("u-x2", offline=True)


def test_hf_checksum_mismatch_deletes_the_cached_file(env, payload, hub):
    wrong = sha(b"not the payload")
    z = write_zoo(env, entry("h-x2", hf(sha=wrong)))
    with pytest.raises(CheckpointError) as err:
        z.resolve("h-x2", progress=False)
    text = one_line(err)
    assert f"expected {wrong}" in text and f"got {sha(payload)}" in text and "deleted" in text
    blobs = list((env / "hf" / "hub").rglob("blobs/*"))
    assert blobs == [] and z.where("h-x2") == "remote"


@pytest.mark.parametrize(
    "source, words",
    [
        (hf(filename="missing.safetensors"), [f"file missing.safetensors not found in repository {REPO}"]),
        (hf(repo="srkd-test/secret"), ["srkd-test/secret", "private", "401"]),
        (hf(repo="srkd-test/nobody"), ["srkd-test/nobody", "not found or private"]),
        (hf(revision="v9"), [f"revision v9 not found in repository {REPO}"]),
    ],
)
def test_hf_not_found_and_private_get_one_clear_line(env, hub, source, words):
    z = write_zoo(env, entry("h-x2", source))
    with pytest.raises(ModelNotFoundError) as err:
        z.resolve("h-x2", progress=False)
    text = one_line(err)
    assert text.startswith("model h-x2: hf ")
    for w in words:
        assert w in text
    assert len(hub.requests("HEAD")) == 1  # a definite answer is not retried


def test_hf_download_cut_off_halfway_is_resumed(env, payload, hub, monkeypatch):
    # Small chunks, so the client keeps the bytes it got and asks for the rest with a Range.
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    hub.cut_once.add(hub.resolve_path(REPO, FILE))
    z = write_zoo(env, entry("h-x2", hf(sha=sha(payload))))
    assert z.resolve("h-x2", progress=False).read_bytes() == payload
    gets = hub.requests("GET")
    assert len(gets) == 2 and "range" not in gets[0].headers
    start = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(payload) // 2


def test_hf_server_error_on_download_is_retried(env, payload, hub):
    hub.fail_times[hub.resolve_path(REPO, FILE)] = 2
    z = write_zoo(env, entry("h-x2", hf(sha=sha(payload))))
    assert z.resolve("h-x2", progress=False).read_bytes() == payload
    assert [r.method for r in hub.log] == ["HEAD", "GET"] * 3


# ----------------------------------------------------------------------------- plain URL sources


def test_url_download_then_cache_with_the_server_stopped(env, payload, hub, monkeypatch):
    u = f"{hub.url}/files/teacher.pth"
    z = write_zoo(env, entry("u-x2", url(u, sha(payload))))
    p = z.resolve("u-x2", progress=False)
    assert p == env / "srkd" / "url" / sha(payload) / "teacher.pth" and p.read_bytes() == payload
    assert list(p.parent.iterdir()) == [p]  # no temporary file left behind
    assert z.where("u-x2") == "cached"
    hub.stop()
    forbid_network(monkeypatch)
    assert z.resolve("u-x2") == p


def test_url_checksum_mismatch_deletes_the_file(env, payload, hub):
    wrong = sha(b"x")
    z = write_zoo(env, entry("u-x2", url(f"{hub.url}/files/teacher.pth", wrong)))
    with pytest.raises(CheckpointError) as err:
        z.resolve("u-x2", progress=False)
    assert f"expected {wrong}" in one_line(err) and f"got {sha(payload)}" in str(err.value)
    assert not (env / "srkd" / "url" / wrong / "teacher.pth").exists()


@pytest.mark.parametrize("path, words", [("/files/none.pth", "not found (HTTP 404)"),
                                         ("/private/w.pth", "access denied (HTTP 401)")])
def test_url_not_found_and_private(env, hub, path, words):
    z = write_zoo(env, entry("u-x2", url(hub.url + path)))
    with pytest.raises(ModelNotFoundError) as err:
        z.resolve("u-x2", progress=False)
    assert one_line(err).startswith(f"model u-x2: url {hub.url}{path}: {words}")
    assert len(hub.requests("GET")) == 1


def test_url_cut_off_and_server_errors_are_retried(env, payload, hub, monkeypatch, capsys):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    u = f"{hub.url}/files/teacher.pth"
    hub.cut_once.add("/files/teacher.pth")
    z = write_zoo(env, entry("u-x2", url(u, sha(payload))))
    assert z.resolve("u-x2").read_bytes() == payload
    assert len(hub.requests("GET")) == 2
    assert "u-x2" in capsys.readouterr().err  # the progress bar's label

    hub.log.clear()
    z2 = write_zoo(env, entry("v-x2", url(u)))
    hub.fail_times["/files/teacher.pth"] = 2
    assert z2.resolve("v-x2", progress=False).read_bytes() == payload
    assert len(hub.requests("GET")) == 3

    hub.log.clear()
    z3 = write_zoo(env, entry("w-x2", url(u + "?again")))
    hub.fail_times["/files/teacher.pth"] = 3
    with pytest.raises(ModelNotFoundError) as err:
        z3.resolve("w-x2", progress=False)
    assert "server error (HTTP 503) (gave up after 3 tries)" in one_line(err)
    assert len(hub.requests("GET")) == 3


def test_missing_sha256_warns_once(env, payload, hub, capsys):
    z = write_zoo(env, entry("u-x2", url(f"{hub.url}/files/teacher.pth")))
    z.resolve("u-x2", progress=False)
    z.resolve("u-x2", progress=False)
    err = capsys.readouterr().err
    assert err.count("has no sha256") == 1 and "not verified" in err


# ----------------------------------------------------------------------------- several sources


def test_sources_are_tried_in_order_and_failures_listed(env, payload, hub):
    good = url(f"{hub.url}/files/teacher.pth", sha(payload))
    z = write_zoo(env, entry("m-x2", hf(filename="missing.safetensors"), good))
    p = z.resolve("m-x2", progress=False)
    assert p.read_bytes() == payload and "srkd" in p.parts
    assert [r.method for r in hub.log] == ["HEAD", "GET"]

    z = write_zoo(env, entry("n-x2", hf(repo="srkd-test/secret"), url(f"{hub.url}/files/none.pth")))
    with pytest.raises(ModelNotFoundError) as err:
        z.resolve("n-x2", progress=False)
    text = one_line(err)
    assert text.startswith("model n-x2: no source worked: (1) hf srkd-test/secret/") and "(2) url " in text


def test_cache_is_preferred_over_an_earlier_source_that_needs_a_download(env, payload, hub):
    u = url(f"{hub.url}/files/teacher.pth", sha(payload))
    write_zoo(env, entry("m-x2", u)).resolve("m-x2", progress=False)
    hub.log.clear()
    z = write_zoo(env, entry("m-x2", hf(sha=sha(payload)), u))
    assert z.resolve("m-x2", progress=False).parent.parent.name == "url"
    assert hub.log == []


# ----------------------------------------------------------------------------- srkd models


def test_models_command_json_and_table(env, payload, hub, monkeypatch, capsys):
    from srkd_cli.cli import main

    z = write_zoo(
        env,
        entry("b-x2", f'{{kind = "bundled", file = "b.safetensors", sha256 = "{sha(payload)}"}}')
        + 'params = 1234\nmetrics = { set5_psnr_y = 36.5, command = "srkd eval ..." }\n'
        + entry("h-x3", hf(sha=sha(payload)), scale=3)
        + entry("u-x4", url(f"{hub.url}/files/teacher.pth"), scale=4),
        bundled={"b.safetensors": payload},
    )
    z.resolve("h-x3", progress=False)
    monkeypatch.setattr(zoo_mod, "get_zoo", lambda: z)
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["scale"], r["where"]) for r in rows] == [("b-x2", 2, "bundled"), ("h-x3", 3, "cached"),
                                                                   ("u-x4", 4, "remote")]
    assert rows[0]["params"] == 1234 and rows[0]["metrics"]["set5_psnr_y"] == 36.5
    assert rows[1]["sources"][0]["repo_id"] == REPO

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for word in ("b-x2", "h-x3", "u-x4", "36.50", "bundled", "cached", "remote", "squeezesr"):
        assert word in out


def test_models_command_lists_the_packaged_zoo(env, capsys):
    from srkd_cli.cli import main

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"swinir4-x2", "swinir4-x3", "swinir4-x4"} <= set(rows)
    assert rows["swinir4-x2"]["where"] == "remote" and rows["swinir4-x2"]["params"] == 910152
    assert sorted(n for n, r in rows.items() if r["default"]) == ["repsr-x2", "repsr-x3", "repsr-x4"]
    assert main(["models"]) == 0
    assert "repsr-x2 (default)" in capsys.readouterr().out


def test_sha256_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc" * 1000)
    assert sha256_file(f) == sha(b"abc" * 1000)


def test_distill_and_upscale_resolve_zoo_names_with_no_other_flag(env, hub, monkeypatch, tmp_path, run_cli):
    """`srkd distill --teacher swinir4 --scale 2` and `srkd upscale --model NAME` go through the zoo."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from srkd_cli.archs import build_model

    tiny = dict(blocks=2, embed_dim=12, depth=2, num_heads=2, window_size=4)
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save({"params": build_model("swinir", 2, **tiny).state_dict()}, buf)  # official release layout
    teacher = buf.getvalue()
    hub.add_repo("srkd-test/teachers", {"swinir4_x2.pth": teacher})
    hub.add_file("student.pth", teacher)
    cfg = "config = { blocks = 2, embed_dim = 12, depth = 2, num_heads = 2, window_size = 4 }\n"
    body = (
        f'[models."swinir4-x2"]\narch = "swinir"\nscale = 2\n{cfg}'
        f'sources = [{hf("srkd-test/teachers", "swinir4_x2.pth", sha=sha(teacher))}]\n'
        f'[models."swinir-s3-kd-x2"]\narch = "swinir"\nscale = 2\n{cfg}'
        f'sources = [{url(hub.url + "/files/student.pth", sha(teacher))}]\n'
    )
    zoo = write_zoo(env, body)
    monkeypatch.setattr(zoo_mod, "get_zoo", lambda: zoo)

    data = tmp_path / "train"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    code, _, err = run_cli(
        "distill", "--teacher", "swinir4", "--scale", "2", "--student", "swinir", "--student-blocks", "1",
        "--data", data, "--steps", "2", "--batch", "2", "--patch", "8", "--out", tmp_path / "run",
        "--device", "cpu", "--quiet",
    )
    assert code == 0, err
    assert (tmp_path / "run" / "final.safetensors").is_file()
    assert hub.requests("GET", hub.resolve_path("srkd-test/teachers", "swinir4_x2.pth"))

    out = tmp_path / "up.png"
    code, _, err = run_cli("upscale", data / "0.png", "-o", out, "--model", "swinir-s3-kd-x2", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert Image.open(out).size == (80, 80)


@pytest.mark.parametrize("name,filename,upstream", [
    ("imdn-x2", "IMDN_x2.pth", "https://github.com/Zheng222/IMDN/raw/master/checkpoints"),
    ("bsrn-x2", "net_g_BSRN_x2.pth", "https://github.com/xiaom233/BSRN/raw/main/experiments/pretrained_models"),
])
def test_distill_from_a_published_teacher_through_the_zoo_with_no_other_flag(name, filename, upstream, env, hub, monkeypatch,
                                                                             tmp_path, run_cli):
    """`srkd distill --teacher NAME --student squeezesr --scale 2`: downloaded, checked, distilled (paper 1's
    pairs S1..S3 <- T1..T3). The test zoo's bundled folder is empty, so the url source resolves."""
    from conftest import shared_path
    from srkd_cli import zoo as zoo_mod

    official = shared_path("teachers", filename)
    hub.add_file(filename, official.read_bytes())
    block = re.search(rf'\[models\."{name}"\].*?\n\]\n', zoo_mod.DEFAULT_TOML.read_text(), re.S).group(0)
    zoo = write_zoo(env, block.replace(upstream, hub.url + "/files"))
    monkeypatch.setattr(zoo_mod, "get_zoo", lambda: zoo)

    code, _, err = run_cli(
        "distill", "--teacher", name, "--student", "squeezesr", "--scale", "2",
        "--data", Path(__file__).parent / "data" / "Set5" / "HR", "--steps", "2", "--batch", "2", "--patch", "16",
        "--out", tmp_path / "run", "--device", "cpu", "--quiet",
    )
    assert code == 0, err
    assert hub.requests("GET", f"/files/{filename}")
    lm = load_checkpoint(tmp_path / "run" / "final.safetensors")
    prov = json.loads(lm.metadata["provenance"])
    assert prov["teacher"] == name and prov["teacher_sha256"] == sha256_file(official)
    assert prov["pairs"] == [["S1", "T1"], ["S2", "T2"], ["S3", "T3"]]
    assert lm.config["blocks"] == 3


def test_a_built_wheel_carries_the_one_weights_toml(tmp_path):
    """No symlink in the tree (checkouts without symlinks would break): the top-level weights.toml
    is copied into the package when it is built, and the installed zoo reads that copy."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    assert not (root / "srkd_cli" / "weights.toml").is_symlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("srkd-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("srkd_cli/weights.toml") == (root / "weights.toml").read_bytes()
        assert "srkd_cli/weights/repsr-x2.safetensors" in z.namelist()
