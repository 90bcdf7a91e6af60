"""fleet pull: verified download, atomic switch, last-known-good kept, refusals leave DIR alone."""

import json
import shutil

from metafleet.cli import main
from policy.artifact import PolicyArtifact
from tests.deploy.conftest import source_dir
from tests.deploy.tamper import edit_manifest


def pull(capsys, uri, out):
    code = main(["pull", uri, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else captured.err)


def test_pull_switches_atomically_and_keeps_last_good(store, tmp_path, capsys):
    out = tmp_path / "policy"
    code, first = pull(capsys, "models:/smoke/1", out)
    assert code == 0 and out.is_symlink()
    assert PolicyArtifact.load(out).digest == first["sha256"]
    record = json.loads((out / "pull.json").read_text())
    assert record["version"] == "1" and record["content_sha256"] == first["sha256"]
    code, second = pull(capsys, "models:/smoke/2", out)
    assert code == 0 and second["previous"] == first["target"]
    assert out.resolve() == tmp_path.joinpath(second["target"]).resolve()
    assert (tmp_path / "policy.last-good").resolve() == tmp_path.joinpath(first["target"]).resolve()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pull.json", "weights.safetensors"]


def test_missing_alias_leaves_dir_untouched(store, tmp_path, capsys):
    out = tmp_path / "policy"
    assert pull(capsys, "models:/smoke/1", out)[0] == 0
    before = out.resolve()
    code, err = pull(capsys, "models:/smoke@production", out)
    assert code == 2 and "production" in err and "unchanged" in err
    assert out.resolve() == before


def test_tampered_weights_are_refused_and_last_good_kept(store, tmp_path, capsys):
    out = tmp_path / "policy"
    assert pull(capsys, "models:/smoke/1", out)[0] == 0
    before = out.resolve()
    source = source_dir(store, "smoke", "2")
    backup = tmp_path / "backup"
    shutil.copytree(source, backup)
    try:
        blob = bytearray((source / "weights.safetensors").read_bytes())
        blob[-1] ^= 0x01  # one flipped bit in the registered weights
        (source / "weights.safetensors").write_bytes(bytes(blob))
        code, err = pull(capsys, "models:/smoke/2", out)
    finally:
        shutil.rmtree(source)
        shutil.copytree(backup, source)
    assert code == 2 and "sha256" in err
    assert out.resolve() == before
    PolicyArtifact.load(out)  # the running policy still verifies


def test_manifest_schema_mismatch_is_refused(store, tmp_path, capsys):
    copy = tmp_path / "copy"  # a local directory: no registry tag, so only the artifact's own checks apply
    shutil.copytree(source_dir(store, "smoke", "1"), copy)

    def shrink(manifest):
        manifest["policy"]["hidden_sizes"] = [32]  # network no longer matches the weights

    edit_manifest(copy, shrink, reseal=True)  # a consistent digest: the schema check is what refuses it
    code, err = pull(capsys, str(copy), tmp_path / "policy")
    assert code == 2 and "expected (32, 20)" in err
    assert not (tmp_path / "policy").exists()


def test_refuses_to_replace_a_real_directory(store, tmp_path, capsys):
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "precious.txt").write_text("keep me")
    code, err = pull(capsys, "models:/smoke/1", tmp_path / "policy")
    assert code == 2 and "not a policy link" in err
    assert (tmp_path / "policy" / "precious.txt").read_text() == "keep me"
